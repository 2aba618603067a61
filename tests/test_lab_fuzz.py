"""The lab under random requests, over real HTTP: every answer is a 4xx JSON error with one
message or a correct 200, never a 5xx or a traceback, and the lab keeps serving."""
import httpx
from hypothesis import HealthCheck, given, settings

from lab_fuzz import check_answer, lab_requests
from test_lab import runs, server  # noqa: F401  (the shared fixtures)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(request=lab_requests())
def test_random_requests_get_a_4xx_json_error_or_a_200_never_a_5xx(request, server):  # noqa: F811
    with httpx.Client(base_url=server, timeout=120) as client:
        check_answer(client, request)
        assert client.get("/api/runs").status_code == 200          # and it keeps serving
