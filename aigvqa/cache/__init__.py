"""The HDF5 feature store: schema, atomic shard writer, merge, reader."""
