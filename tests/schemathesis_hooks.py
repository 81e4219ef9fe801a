"""schemathesis hooks shared by the fuzz tests, in process and through the
CLI (``SCHEMATHESIS_HOOKS=tests.schemathesis_hooks``): the document marks a
time zone's name with a format of its own, and generated bodies then name
real zones, rather than failing the rules on a random one before anything
else of theirs is judged."""

import zoneinfo

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format("timezone", st.sampled_from(sorted(zoneinfo.available_timezones())))
