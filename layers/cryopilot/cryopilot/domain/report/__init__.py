"""A report per run: Markdown, a self-contained HTML page and a PNG timeline (Gantt chart).

Pure rendering: :func:`~.data.report_data_from_run` turns a run record and its plan (as
``runs.get_run`` and ``runs.get_plan`` return them) into a :class:`~.data.ReportData`, and the
``render_*`` functions turn that into bytes. Nothing here reads AWS or the clock; the caller stores
the files wherever it likes.

The stage table has the shape of the white paper's Table 1 (stage, queue, instance, GPUs, wall
time) with a cost column: a stage's wall hours × the nodes its GPUs need × the hourly price of the
queue's instance type. Stages on the cryoSPARC master (no queue) run on the head node, which is
paid for the whole run anyway, so they carry no cost of their own.

The modules (import a name from the module that defines it; this file exports nothing):

* :mod:`.rows` — :class:`~.rows.StageRow`, one planned stage as it ran, and the queues' GPUs per node;
* :mod:`.data` — :class:`~.data.ReportData` and :func:`~.data.report_data_from_run`;
* :mod:`.bill` — the estimate of the GPU nodes' bill (:func:`~.bill.node_bill`) and how a run's cost
  is written (:func:`~.bill.cost_text`);
* :mod:`.text` — the plain-text cells, figures and summary lines the renderers share;
* :mod:`.markdown`, :mod:`.html`, :mod:`.png` — one renderer each;
* :mod:`.render` — :func:`~.render.render_all`, the three files together.
"""
