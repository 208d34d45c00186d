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


def web_sources(cloudflare_only: bool) -> pulumi.Output[list[str]]:
    """Who may open the site's ports: Cloudflare's published ranges (every request is proxied through
    it, so nobody bypasses Cloudflare to reach the origin), or anyone."""
    if not cloudflare_only:
        return pulumi.Output.from_input(["0.0.0.0/0", "::/0"])
    ranges = cloudflare.get_ip_ranges_output()
    return ranges.apply(lambda found: [*found.ipv4_cidrs, *found.ipv6_cidrs])
