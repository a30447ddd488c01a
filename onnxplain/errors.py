"""The one error type the CLI reports as a message: one line on stderr and exit code 2, no traceback."""


class OnnxplainError(Exception):
    """Bad input from the user (file, model, tensor, option), or a model onnxplain cannot handle; the few that a
    bug of onnxplain's would raise (a normalisation that changed the model) say "please report it"."""


class NotFinite(OnnxplainError):
    """A relevance map with NaN or infinity (`Explanation`): `rows` are the inputs it holds them for, `names` how the
    message names them (their indices in the explained batch by default; the CLI gives file names)."""

    def __init__(self, method: str, rows, names=None):
        self.method, self.rows = method, [int(row) for row in rows]
        super().__init__(f"{method}: the relevance of input(s) {named_list(self.rows if names is None else names, 5)}"
                         " is not finite (NaN or infinity): the model's scores are not finite at points the method "
                         "builds from them (a baseline, a path point, a noisy copy, a covered window)")


def named_list(items, most: int = 3, separator: str = ", ") -> str:
    """The first `most` items (as text), and how many more: the lists that messages and notes name."""
    items = [str(item) for item in items]
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return separator.join(items[:most]) + more


def not_applicable(options: list[str], where: str) -> OnnxplainError:
    """The error for options given where they do nothing (refused rather than ignored): `where` says what they do
    not apply to, e.g. '--method gradient'."""
    return OnnxplainError(f"option(s) {', '.join(options)} do not apply to {where}")
