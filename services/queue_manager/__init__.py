"""The queue manager: a fair, lease-based ComfyUI job queue on Redis, behind FastAPI.

Run it with ``uvicorn services.queue_manager.main:app`` (settings from ``QM_*``, see
``settings.py``); operators use ``python -m services.queue_manager.cli snapshot|restore|drain``.

Where things are:
- ``store.py`` ``Store``: the one object everything else calls (submit, list, cancel, claim,
  heartbeat, complete, fail, release, admin levers); ``keys.py`` the Redis key schema; ``lua/``
  the scripts that make each state change atomic; ``leases.py``, ``registry.py`` and
  ``queue_admin.py`` the worker, registry and admin halves of ``Store``.
- ``events.py`` ``EventBus``: per-user event streams over Redis pub/sub (``store.events``);
  ``notices.py`` what each lifecycle change tells the participant (with ComfyUI's message).
- ``main.py`` ``create_app``; ``api/main.py`` the router index; ``api/deps.py`` ``CurrentUser``,
  ``AdminUser``, ``WorkerPool``, ``StoreDep``; ``api/routes/<area>.py`` one file per URL area.
- ``background.py`` reaper, listeners and position updates; ``snapshot.py`` snapshot/restore;
  ``auth.py`` passwords, session cookies and worker tokens; ``metrics.py``/``scrape.py``
  Prometheus; ``logs.py`` JSON logs.
"""
