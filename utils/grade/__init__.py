"""Grade a whole class's notebooks: `python -m utils.grade SUBMISSIONS... --out DIR`.

How a submission is graded (each step is one module):
1. `notebook.py` reads it (nbformat 3 converted), tells its chapter from the exercise ids it holds
   (never its file name), and finds, for each exercise, the cell that defines the exercise's
   function or class (the one the student's own check cell saw) and the student's own cells above it.
2. `tamper.py` reads every cell the student changed: a cell that rebinds the workbook's checks or
   references, patches a module, or reaches for the grader's machinery marks the submission
   "tampered", and it is not run. Setup magics (`%matplotlib inline`) are dropped first.
3. `execute.py`, in a fresh subprocess, runs the *official* student notebook of that chapter in a
   fresh kernel walled in by the operating system (`sandbox.py`: bubblewrap, its own uid, no
   network, read-only workbook, limits), offline, with a scratch progress file, the student's
   cells (and helpers) put in place of the stubs and the check cells replaced by the grader's
   (`kernel.py`). A verdict travels from the kernel to the grader as a display message signed with
   a key no cell's source holds: nothing the student's notebook printed, displayed or saved counts.
   A loop, a crash or a memory blow-up costs only its own exercise: the notebook is run again with
   that exercise set back to its stub.
4. `cli.py` grades what a chapter carried out of the kernel (`graded_payload`) in this process,
   and `report.py` writes grades.csv, the class report and one feedback page per student, once
   every kernel is gone.

Every exercise of the chapter gets exactly one row, whatever happened to the submission.
"""

from __future__ import annotations

from dataclasses import dataclass

PASSED, NOT_ATTEMPTED, WRONG = "passed", "not attempted", "wrong"
MISSING, ERROR, TIMEOUT, OUT_OF_MEMORY, TAMPERED = "missing", "error", "timeout", "out of memory", "tampered"
STATUSES = (PASSED, NOT_ATTEMPTED, WRONG, MISSING, ERROR, TIMEOUT, OUT_OF_MEMORY, TAMPERED)
CSV_COLUMNS = ("student", "chapter", "exercise", "status", "message", "seconds")


@dataclass(frozen=True)
class Row:
    """One student's result on one exercise, as grades.csv holds it (`title` is for the reports).

    `seconds` is how long the exercise's cells ran; it is the one column that changes between
    reruns of the same class.
    """

    student: str
    chapter: str
    exercise: str
    status: str
    message: str = ""
    seconds: float = 0.0
    title: str = ""

    def as_csv(self) -> dict[str, str]:
        return {"student": self.student, "chapter": self.chapter, "exercise": self.exercise,
                "status": self.status, "message": self.message, "seconds": f"{self.seconds:.1f}"}
