"""Two nbgrader preprocessors the course's ``nbgrader_config.py`` plugs in.

- :class:`StderrAsStdout` (autograde, after ``Execute``): nbgrader scores a test cell 0 when it
  wrote anything to stderr, so a harmless warning would cost full marks. Stderr text in test
  cells becomes ordinary output: still shown, no longer fatal. Errors still score 0.
- :class:`StripHiddenTests` (generate_feedback): the autograded notebook holds the hidden tests
  (nbgrader puts them back to run them); feedback must not show them. Hidden regions become one
  comment line, and an error raised in such a cell keeps only its last line (a traceback would
  quote the hidden code).

This module must stay light: nbgrader imports it for every command.
"""
from __future__ import annotations

from traitlets import Unicode

from nbgrader import utils
from nbgrader.preprocessors import NbGraderPreprocessor

__all__ = ["StderrAsStdout", "StripHiddenTests", "strip_hidden_region"]

BEGIN_HIDDEN = "BEGIN HIDDEN TESTS"
END_HIDDEN = "END HIDDEN TESTS"
HIDDEN_PLACEHOLDER = "# (hidden tests: not shown in feedback)"


class StderrAsStdout(NbGraderPreprocessor):
    """Turn stderr output of test cells into stdout, so warnings don't zero a cell."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "stream" and output.get("name") == "stderr":
                    output["name"] = "stdout"
        return cell, resources


def strip_hidden_region(source: str, placeholder: str = HIDDEN_PLACEHOLDER) -> tuple[str, bool]:
    """``source`` without its hidden-test regions (each replaced by ``placeholder``)."""
    kept, inside, found = [], False, False
    for line in source.split("\n"):
        if BEGIN_HIDDEN in line:
            inside, found = True, True
            kept.append(placeholder)
        elif END_HIDDEN in line:
            inside = False
        elif not inside:
            kept.append(line)
    return "\n".join(kept), found


class StripHiddenTests(NbGraderPreprocessor):
    """Remove hidden tests (and the tracebacks that would quote them) from feedback."""

    placeholder = Unicode(HIDDEN_PLACEHOLDER, help="What replaces a hidden region").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        source, found = strip_hidden_region(cell.source, self.placeholder)
        if not found:
            return cell, resources
        cell.source = source
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources

