"""Schema fuzzing (schemathesis) of the whole OpenAPI document, the multipart upload included: no request may
get a server error from a running stack whose broker, database and workers are all up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from tests.conftest import Stack, StackFactory

pytestmark = pytest.mark.e2e
EXAMPLES = 12
"""Examples per operation: enough to reach every error path of a route, short enough for `make test`."""


@pytest.fixture(scope="module")
def stack(stack_factory: StackFactory) -> Stack:
    stack = stack_factory()
    stack.start_api()
    stack.start_worker()
    stack.wait_ready()
    return stack


def fuzzer(operation: Any, base_url: str, sent: dict[str, int]) -> Callable[[], None]:
    """A hypothesis test sending `EXAMPLES` generated requests to one operation."""

    @hypothesis.given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )  # fmt: skip
    def fuzz(case: Any) -> None:
        sent[operation.label] = sent.get(operation.label, 0) + 1
        case.call_and_validate(base_url=base_url, checks=[not_a_server_error], timeout=30)

    return fuzz


def test_no_request_gets_a_server_error(stack: Stack) -> None:
    # Driven through schemathesis' Python API: its pytest plugin does not support this pytest's collection.
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert any(op.path == "/models/{name}/versions" and op.method.upper() == "POST" for op in operations)
    failures: list[str] = []
    sent: dict[str, int] = {}
    for operation in operations:
        try:
            fuzzer(operation, stack.url, sent)()
        except Exception as e:
            failures.append(f"{operation.label}: {e}")
    assert not failures, "\n\n".join(failures)
    assert len(sent) == len(operations) and sum(sent.values()) >= 5 * len(operations), sent
