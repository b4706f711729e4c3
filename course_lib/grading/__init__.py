"""Grading: nbgrader assignments that hold against real submissions.

Two halves, used in two places:

- **In a notebook** (the locked set-up cell of an assignment imports them): the graded checks of
  each assignment, e.g. :mod:`course_lib.grading.a1`. They compare the learner's function with
  the course reference on fresh random inputs, refuse answers that call the reference, and put
  back library functions a notebook replaced (:mod:`course_lib.grading.guard`) before judging.
- **On the instructor's machine**: the ``course-grade`` command (:mod:`course_lib.grading.cli`)
  grades submissions in parallel, each in a sandbox (:mod:`course_lib.grading.sandbox`), checks
  every verdict again from a clean process (:mod:`course_lib.grading.remote`), reads the answer
  cells for tampering (:mod:`course_lib.grading.audit`), writes nbgrader's gradebook, feedback
  and a grades CSV. ``docs/instructors.md`` tells the whole story.

This package file imports nothing heavy: nbgrader loads our plugins from it on every command.
"""
