"""Problems a person can act on: `FILE:LINE: key.path: what is wrong (hint)`."""

from __future__ import annotations

from dataclasses import dataclass

from eagle_recipes.errors import UserError


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    key: str  # dotted key path, "" for the whole file
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}:{key} {self.message}{hint}"


class RecipeError(UserError):
    """A recipe (or a file it names) is wrong; carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))
