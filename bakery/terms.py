"""The words every stage shares: the severity order, how a timestamp is written, the label keys of an image.

Plain constants and one function, no classes: the scan path (``bakery scan IMAGE``, served from the store)
imports them without the typed model's dataclasses (``bakery.model`` re-exports them; ~4 ms of start-up).
"""

from __future__ import annotations

import datetime as dt


def iso_z(t: dt.datetime | None) -> str | None:
    """A timestamp as UTC ISO 8601 with ``Z`` (None stays None): how every report and record writes time."""
    if t is None:
        return None
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


# Vulnerability severities, lowest first: the one order (scan, policy, reports, nightly, trivydb, config).
SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")

# Label keys every bakery image carries.
OCI = "org.opencontainers.image."
LABEL_CREATED = OCI + "created"
LABEL_NAME = "dev.bakery.name"
LABEL_VERSION = "dev.bakery.version"
LABEL_VARIANT = "dev.bakery.variant"
LABEL_FINGERPRINT = "dev.bakery.fingerprint"
LABEL_BUILD_TAG = "dev.bakery.build-tag"
