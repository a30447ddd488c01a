"""The one error type for a user's mistakes: the CLI prints its message on one line and exits with code 2."""


class OnnxplainError(Exception):
    """Bad input from the user (file, model, tensor, option); never a bug in onnxplain."""
