"""The worker agent: runs participants' jobs on a ComfyUI server and reports back to the queue manager.

Modules, one concept each:

* ``settings``      - ``WorkerSettings`` (env ``WORKER_*``)
* ``comfy_client``  - HTTP calls to ComfyUI (``/prompt``, ``/history``, ``/view``, ``/upload/image``...)
* ``comfy_events``  - the agent's one ``/ws`` connection, events routed per ``prompt_id``
* ``supervisor``    - ComfyUI as a child process (or attached by URL): readiness, death, restart
* ``throttle``      - token buckets per event kind; held events go out in arrival order, newest of each kind
* ``forwarder``     - progress, node states, previews and node events to the queue manager, throttled
                      and batched; what is unsent at the end rides in the completion or failure
* ``outputs``       - every output named by ``/history``, streamed from ``/view`` to user-file storage
* ``runner``        - one job on ComfyUI, start to outcome (success, error, cancel, lost)
* ``queue_client``  - the queue manager's worker API, with retries
* ``lease``         - heartbeats that keep a lease and carry cancel requests
* ``agent``         - assembles the above; startup (models, warmup, catalogue) and ``run_lease``
* ``pull``          - front door for instances: register, long-poll claim, SIGTERM drain
* ``push``          - front doors for serverless: Verda container HTTP handler, RunPod handler
* ``models``        - model manifest, sync from the models bucket, verification
* ``cli``           - ``python -m services.worker pull | serve-push | runpod | sync-models``
"""
