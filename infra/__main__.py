"""Entry point `pulumi up` runs (`main: infra/` in Pulumi.yaml). All logic lives in `infra.program`."""

from infra.program import main

main()
