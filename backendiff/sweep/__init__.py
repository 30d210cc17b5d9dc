"""``backendiff sweep``: a set of models x a set of backend specs, one scoreboard.

Each (model, spec) cell is one ``compare`` of that model on that one spec, with the sweep's
options, plus the latency of the compiled model measured in the backend's own worker. A
finished cell is stored under a content key (the model's exported program as
``compare.model_key`` gives it, its inputs and data, the canonical spec, the options, the
runtime versions), so a rerun or a resumed sweep skips it and ``--force`` redoes it; two
entries with the same key share their cells and are named identical. Each run also stores
its plan (which key serves which model and spec), from which ``render_from_store`` redraws
the scoreboard without running anything. Cells run on an executor: ``local`` (worker
processes on this machine) or ``ray`` (tasks on a Ray cluster, each asking for the
resources its backend needs). A cell whose worker dies is stored as ``lost`` and the sweep
goes on.

This module plans, keys and runs cells and turns stored cells into the scoreboard data;
``render.print_scoreboard`` and ``html.render_sweep_html`` draw it.
"""
from .board import (  # noqa: F401
    _finite,
    _latency,
    _message,
    _sqnr_text,
    _vacuous_reason,
    base_spec,
    cell_lines,
    cell_page,
    exit_code,
    finding_text,
    findings,
    identical_text,
    scoreboard,
    slug,
    summarize_cell,
    task_score,
)
from .cell import (  # noqa: F401
    cell_key,
    cell_options,
    cell_payload,
    compare_config,
    file_digest,
    lost_record,
    model_identity,
    run_cell,
    run_spec,
    spec_versions,
)
from .executors import LocalExecutor, RayExecutor, _cell_process, cell_resources, check_ray_address, default_workers, needs_gpu  # noqa: F401
from .plan import (  # noqa: F401
    CELL_SCHEMA,
    ERROR,
    LOST,
    NOT_RUN,
    OPTION_KEYS,
    PATH_KEYS,
    SCHEMA,
    ModelEntry,
    SweepPlan,
    _positive,
    check_options,
    check_resources,
    check_specs,
    import_plugins,
    load_sweep_file,
    make_plan,
    split_specs,
)
from .store import PLAN_SCHEMA, CellStore, keep_record, plan_cells, plan_key, render_from_store, run_sweep  # noqa: F401
