"""What the tests, the benchmarks and ``make dev`` share: launchers of real servers on loopback
(Redis, the queue manager process, nginx, moto S3), the serverless platform double, the ComfyUI
double (``devkit.doubles``), the Pulumi program under mocks (``devkit.harness``) and ``make dev``
itself (``devkit.dev``: the platform from the checkout as processes, without Docker)."""
