"""One door for boto3 calls outside the registry protocol (EC2 for AMIs, S3 for AMI evidence).

An unreachable endpoint, missing credentials or region is an environment failure (exit 3); an answer of
AWS refusing the call is a failed step (exit 1). Messages are masked. ECR, which is a registry, maps its
errors onto the registry's own exceptions in bakery.ecr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from bakery import secrets
from bakery.errors import EnvironmentFailure, StepFailed

T = TypeVar("T")


def call(what: str, fn: Callable[[], T]) -> T:
    """Run one boto3 call, mapping its failures onto bakery's exit codes (botocore imported only here)."""
    from botocore.exceptions import (BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError,
                                     NoRegionError)

    try:
        return fn()
    except (EndpointConnectionError, NoCredentialsError, NoRegionError) as exc:
        raise EnvironmentFailure(secrets.mask(f"AWS: {what}: {exc}")) from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise StepFailed(secrets.mask(f"AWS: {what}: {err.get('Code', 'error')}: {err.get('Message', exc)}")) from None
    except BotoCoreError as exc:
        raise EnvironmentFailure(secrets.mask(f"AWS: {what}: {exc}")) from None
