"""pipeline.config: the one place TOML configuration files are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigvqa.errors import AigvqaError
from aigvqa.pipeline.config import ConfigError, load_extractor_config, load_head_config


def test_head_config_splits_the_name_from_the_parameters(tmp_path):
    path = tmp_path / "head.toml"
    path.write_text('head = "svr"\nC = 8.0\npooling = ["mean", "std"]\n')
    assert load_head_config(path) == ("svr", {"C": 8.0, "pooling": ["mean", "std"]})
    assert load_head_config(None) == (None, {})


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "does not exist"),
        ("C = [", "is not valid TOML"),
        ("head = 3\n", "`head` must be a head name string"),
    ],
)
def test_bad_head_configs_are_config_errors_naming_the_file(tmp_path, text, message):
    path = tmp_path / "head.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_head_config(path)
    assert str(path) in str(caught.value) and isinstance(caught.value, AigvqaError)


def test_extractor_config_resolves_relative_weights_next_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "extractors.toml"
    path.write_text(
        '[clip-frames]\narch = "ViT-B-16"\nweights = "ckpt.pt"\n\n'
        f'[slowfast]\nweights = "{tmp_path / "abs.pyth"}"\n\n[handcrafted]\n'
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_extractor_config(path)
    assert config == {
        "clip-frames": {"arch": "ViT-B-16", "weights": str(folder / "ckpt.pt")},
        "slowfast": {"weights": str(tmp_path / "abs.pyth")},
        "handcrafted": {},
    }
    assert Path(config["clip-frames"]["weights"]).is_absolute()


def test_extractor_config_refuses_options_outside_a_table(tmp_path):
    path = tmp_path / "extractors.toml"
    path.write_text('arch = "ViT-B-16"\n[clip-frames]\n')
    with pytest.raises(ConfigError, match="arch are not tables"):
        load_extractor_config(path)
