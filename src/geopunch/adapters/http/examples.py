"""Request examples shown in the OpenAPI document and its docs page.

The project's own values, in the shapes the endpoints take: a live punch, an
offline one with its device timestamp, a break, a geofence batch and shifts.
"""

from __future__ import annotations

from typing import Any

_HERE = {"address": "12 Quay Street, Leith", "latitude": 55.9761, "longitude": -3.1698}


def _ex(summary: str, value: Any) -> dict[str, Any]:
    return {"summary": summary, "value": value}


EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "clock-in": {
        "live": _ex(
            "A live clock-in on a job, with the device's position",
            {
                "userId": 4242,
                "jobId": "dock-crew",
                "timezone": "Europe/London",
                "locationData": _HERE,
            },
        ),
        "offline": _ex(
            "A clock-in queued on an offline device, sent with its own time",
            {"userId": 4242, "timezone": "Europe/London", "timestamp": 1767600000},
        ),
    },
    "clock-out": {
        "live": _ex(
            "A live clock-out",
            {"userId": 4242, "timezone": "Europe/London", "locationData": _HERE},
        ),
    },
    "break-start": {
        "live": _ex("A break started now", {"userId": 4242, "timezone": "Europe/London"}),
    },
    "break-end": {
        "resume": _ex(
            "End the break and resume the shift it interrupted",
            {"userId": 4242, "timezone": "Europe/London"},
        ),
        "stay-off": _ex(
            "End the break without resuming the shift",
            {"userId": 4242, "isResumeShift": False},
        ),
    },
    "geofences": {
        "two": _ex(
            "Two fences, coordinates as numeric strings",
            {
                "geofences": [
                    {
                        "name": "Leith depot",
                        "location": {
                            "address": "12 Quay Street, Leith",
                            "latitude": "55.9761",
                            "longitude": "-3.1698",
                        },
                        "fenceSize": 150,
                        "jobIds": ["dock-crew"],
                        "onGeofenceExitAction": "autoClockOut",
                    },
                    {
                        "name": "Granton yard",
                        "location": {
                            "address": "3 West Harbour Road",
                            "latitude": "55.9823",
                            "longitude": "-3.2234",
                        },
                    },
                ]
            },
        ),
    },
    "shifts": {
        "published": _ex(
            "A published shift for one user, with a lunch break at 12:30",
            [
                {
                    "startTime": 1767945600,
                    "endTime": 1767974400,
                    "title": "Early dock shift",
                    "isPublished": True,
                    "assignedUserIds": [4242],
                    "breaks": [
                        {"name": "Lunch", "type": "unpaid", "startTime": 750, "duration": 30}
                    ],
                }
            ],
        ),
        "open": _ex(
            "An open shift users may claim",
            [
                {
                    "startTime": 1767945600,
                    "endTime": 1767974400,
                    "title": "Cover",
                    "isOpenShift": True,
                    "isPublished": True,
                }
            ],
        ),
    },
    "time-activities": {
        "overnight": _ex(
            "A shift and its lunch break from a device that was offline overnight",
            {
                "timeActivities": [
                    {
                        "userId": 4242,
                        "shifts": [
                            {
                                "start": {"timestamp": 1767600000, "timezone": "Europe/London"},
                                "end": {"timestamp": 1767614400},
                                "jobId": "dock-crew",
                                "notes": "sent after reconnecting",
                            }
                        ],
                        "manualBreaks": [
                            {
                                "manualBreakId": "lunch",
                                "start": {"timestamp": 1767614400},
                                "end": {"timestamp": 1767616200},
                            }
                        ],
                    }
                ]
            },
        ),
    },
}
