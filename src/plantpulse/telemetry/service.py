"""Ingest steps shared by HTTP and MQTT: drop rows of unknown machines (or register them),
then hand the rest to the batch writer."""

from __future__ import annotations

from plantpulse.machines.catalog import MachineCatalog
from plantpulse.telemetry.payloads import Parsed


async def keep_known_machines(
    catalog: MachineCatalog, parsed: Parsed, *, auto_register: bool
) -> Parsed:
    """Rows of unregistered machines become rejections, unless auto-registration is on."""
    wanted = {row[1] for row in parsed.rows}
    if not wanted:
        return parsed
    known = await catalog.known(wanted)
    unknown = wanted - known
    if not unknown:
        return parsed
    if auto_register:
        await catalog.register(unknown)
        return parsed
    result = Parsed(rejected=list(parsed.rejected))
    for row in parsed.rows:
        if row[1] in unknown:
            continue
        result.rows.append(row)
    for machine_id in sorted(unknown, key=str):
        result.reject(str(machine_id), f"machine {machine_id} is not registered")
    return result
