"""Per-tenant quotas, checked when a tenant asks for more: active jobs, stored bytes
and compute (`td3core.cost.estimate_compute`, in billions of item scores). Over a
quota the request answers 429 `quota_exceeded` with what was asked and what is left."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db import Database
from api.errors import APIError
from api.lifecycle import ACTIVE, JobStatus
from api.models import Artifact, Checkpoint, Dataset, Job, Tenant
from api.settings import Settings
from td3core.config import JobConfig
from td3core.cost import estimate_compute

# Jobs whose compute counts against the tenant: spent or still to be spent.
_CHARGED = (*ACTIVE, JobStatus.SUCCEEDED)


@dataclass(frozen=True)
class Quotas:
    """The limits (0: none)."""

    max_active_jobs: int
    max_stored_bytes: int
    job_max_compute: float
    tenant_max_compute: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        return cls(
            max_active_jobs=settings.tenant_max_active_jobs,
            max_stored_bytes=settings.tenant_max_stored_bytes,
            job_max_compute=settings.job_max_compute,
            tenant_max_compute=settings.tenant_max_compute,
        )

    def admit_job(
        self, session: Session, tenant: Tenant, config: dict[str, Any], dataset: Dataset
    ) -> float:
        """Check a new job of `tenant` fits its quotas; returns its compute estimate.
        Locks the tenant's row, so two concurrent submissions are counted one after
        the other."""
        session.scalar(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
        stats = dataset.stats
        estimate = estimate_compute(
            JobConfig.model_validate(config),
            items=int(stats.get("items", 0)),
            interactions=int(stats.get("interactions", 0)),
        )
        if self.job_max_compute and estimate > self.job_max_compute:
            raise _exceeded(
                f"this job needs about {estimate:.4g} compute units; one job may use at "
                f"most {self.job_max_compute:.4g} (fewer epochs, inner steps, users or "
                "length make it smaller)"
            )
        active = session.scalar(
            select(func.count()).where(Job.tenant_id == tenant.id, Job.status.in_(ACTIVE))
        )
        if self.max_active_jobs and (active or 0) >= self.max_active_jobs:
            raise _exceeded(
                f"{active} jobs queued or running; the limit is {self.max_active_jobs}: "
                "wait for one to finish or cancel one"
            )
        used = session.scalar(
            select(func.coalesce(func.sum(Job.compute_estimate), 0.0)).where(
                Job.tenant_id == tenant.id, Job.status.in_(_CHARGED)
            )
        )
        if self.tenant_max_compute and (used or 0.0) + estimate > self.tenant_max_compute:
            raise _exceeded(
                f"this job needs about {estimate:.4g} compute units and {used:.4g} of "
                f"this tenant's {self.tenant_max_compute:.4g} are used"
            )
        self._check_storage(session, tenant)
        return estimate

    def check_storage(self, db: Database, tenant: Tenant) -> None:
        """Refuse a new upload once the tenant's stored bytes reach the quota."""
        with db.session() as session:
            self._check_storage(session, tenant)

    def _check_storage(self, session: Session, tenant: Tenant) -> None:
        if not self.max_stored_bytes:
            return
        used = stored_bytes(session, tenant.id)
        if used >= self.max_stored_bytes:
            raise _exceeded(
                f"this tenant stores {used} bytes; the limit is {self.max_stored_bytes}: "
                "delete datasets you no longer need"
            )


def stored_bytes(session: Session, tenant_id: str) -> int:
    """Bytes of the tenant's datasets, summaries and checkpoints."""
    datasets = select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(
        Dataset.tenant_id == tenant_id
    )
    artifacts = (
        select(func.coalesce(func.sum(Artifact.size_bytes), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.tenant_id == tenant_id)
    )
    checkpoints = (
        select(func.coalesce(func.sum(Checkpoint.size_bytes), 0))
        .join(Job, Job.id == Checkpoint.job_id)
        .where(Job.tenant_id == tenant_id)
    )
    return sum(int(session.scalar(q) or 0) for q in (datasets, artifacts, checkpoints))


def _exceeded(message: str) -> APIError:
    return APIError(429, "quota_exceeded", message)
