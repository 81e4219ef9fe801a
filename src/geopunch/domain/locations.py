"""What the fence engine says of points and trail samples."""

from __future__ import annotations

from enum import IntEnum


class PointStatus(IntEnum):
    """Why a point or trail sample was judged, or could not be; one code space
    for CheckLocations points, EvaluateTrails/ReportLocations samples and the
    rows of ``geopunch trails`` (their answers carry these numbers)."""

    OK = 0
    INVALID_COORDINATES = 1  # not finite, or outside [-90, 90] x [-180, 180]
    UNKNOWN_TIME_CLOCK = 2  # the point's time clock does not exist
    UNKNOWN_JOB = 3  # the point's job is not a job of its time clock
    INVALID_ACCURACY = 4  # negative or infinite
    IGNORED_ACCURACY = 5  # less accurate than the clock's low_accuracy_max_m
    SKIPPED = 6  # left out by the caller: a stale live sample (STALE in answers)
    OUT_OF_ORDER = 7  # trail files: older than an earlier row of its trail
    DUPLICATE = 8  # trail files: at the same second as an earlier row of its trail
    MISSING_VALUE = 9  # trail files: an empty required cell
    UNKNOWN_USER = 10  # the user is not assigned to the sample's time clock


#: A stale live sample: older than the user's last accepted one.
STALE = PointStatus.SKIPPED
