"""The one error type for a user's mistakes: the CLI prints its message on one line and exits with code 2."""


class OnnxplainError(Exception):
    """Bad input from the user (file, model, tensor, option); never a bug in onnxplain."""


def not_applicable(options: list[str], where: str) -> OnnxplainError:
    """The error for options given where they do nothing (refused rather than ignored): `where` says what they do
    not apply to, e.g. '--method gradient'."""
    return OnnxplainError(f"option(s) {', '.join(options)} do not apply to {where}")
