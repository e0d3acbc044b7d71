"""Stage-two estimators: deep fusion heads (torch) and classical regressors, all sklearn-style."""
