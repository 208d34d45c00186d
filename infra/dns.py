"""The public name: a proxied Cloudflare record, so browsers get Cloudflare's TLS and the VPS's
address stays behind Cloudflare (nginx serves the origin certificate Cloudflare trusts)."""

from __future__ import annotations

import pulumi
import pulumi_cloudflare as cloudflare


def dns_record(
    name: str, zone: str, domain: str, address: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
) -> cloudflare.DnsRecord:
    found = cloudflare.get_zone_output(filter=cloudflare.GetZoneFilterArgs(name=zone, match="all"))
    return cloudflare.DnsRecord(
        name,
        zone_id=found.zone_id.apply(lambda zone_id: zone_id or ""),
        name=domain,
        type="A",
        content=address,
        ttl=1,
        proxied=True,
        comment="comfy-workshop: managed by Pulumi (workshop stack)",
        opts=opts,
    )
