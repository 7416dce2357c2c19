"""How far a brain age can be trusted, in one import: :mod:`brainage.retest` (test–retest of brain age
and of its gap, longitudinal consistency) and :mod:`brainage.conformal` (per-scan intervals).

Pose re-sampling for checking pose invariance is the benchmark's own (``bench/pose_resample.py``,
used by ``bench/pose.py``), not part of the package.
"""

from __future__ import annotations

from brainage.conformal import ConformalInterval, coverage, covered, session_residuals
from brainage.retest import ReliabilityResult, gap_retest, longitudinal, test_retest

__all__ = ["ConformalInterval", "ReliabilityResult", "coverage", "covered", "gap_retest", "longitudinal", "session_residuals", "test_retest"]
