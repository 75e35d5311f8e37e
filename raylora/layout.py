"""The study folder's layout: every file name raylora writes under ``<storage>/<study.name>/``, in one place.

<study>/
  summary.json            SUMMARY      every trial's state, params, value, adapter (what users read)
  optuna.journal          JOURNAL      Optuna's journal (the searcher's state)
  spec.json               SPEC         the resolved spec the study started with (the --resume guard)
  baseline.json           BASELINE     the base model's score on the eval set
  mlflow_pending.json     PENDING      MLflow records a run could not send yet
  driver.lock             LOCK         the one driver's lease
  report/                 REPORT_DIR   the study's report: leaderboards, figures and
    index.html            REPORT_PAGE  the page that opens with the verdict
  tune/                   TUNE         Ray Tune's experiment state (never read back)
  pools/                  POOLS        Ray Train's own state for the trial pool's worker groups
  runs/<slot>/            RUNS         each trial's checkpoints
    reports.jsonl         REPORTS      every report rank 0 sent, replayed on resume
    checkpoint_s<step>/   CHECKPOINT_PREFIX + the step, 7 digits
      adapter/            ADAPTER      the PEFT adapter (vanilla ``PeftModel.from_pretrained``)
      targets.json        TARGETS      the resolved LoRA modules and trainable parameters per scope
      eval_items.json     EVAL_ITEMS   the final evaluation's outcome per eval record
      trainer_state.pt    STATE_FILE   optimizer, scheduler and data position for resuming
      report.json         DONE         the metrics at this step; it marks the checkpoint whole
      manifest.json       MANIFEST     each file's size and sha256, written last; checked before a resume

``raylora train --output DIR`` writes one trial's ``adapter/`` (ADAPTER), ``targets.json`` (TARGETS) and
``metrics.json`` (METRICS_FILE: the last evaluation and the history of every report).
"""

SUMMARY = "summary.json"
JOURNAL = "optuna.journal"
SPEC = "spec.json"
BASELINE = "baseline.json"
"""The base model's result in the study's folder (pushed with its state), so ``--resume`` reuses it."""
PENDING = "mlflow_pending.json"
LOCK = "driver.lock"
REPORT_DIR = "report"
REPORT_PAGE = "index.html"
TUNE = "tune"
POOLS = "pools"
RUNS = "runs"
CHECKPOINT_PREFIX = "checkpoint_s"

REPORTS = "reports.jsonl"
ADAPTER = "adapter"
TARGETS = "targets.json"
EVAL_ITEMS = "eval_items.json"
STATE_FILE = "trainer_state.pt"
DONE = "report.json"
METRICS_FILE = "metrics.json"
MANIFEST = "manifest.json"

STATE_FILES = (SUMMARY, JOURNAL, PENDING, SPEC, BASELINE)
"""The study's state: pulled before and pushed after a driver runs on URI storage."""
