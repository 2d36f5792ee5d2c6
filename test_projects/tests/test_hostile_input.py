"""Hostile or careless input: rows naming forbidden functions, odd arguments.

A row written by hand (SQL, a compromised admin, a restored dump) can name any
function: a worker must refuse to call one outside the allow-list. And
whatever ``schedule()`` accepts must reach the function exactly as passed.
"""

import pytest
from django.db import transaction
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from shop.models import Mark

from async_jobs import Job, schedule

pytestmark = pytest.mark.django_db


def forbidden_rows(target: str) -> dict[str, list]:
    """Names outside the allow-list, with arguments that would leave a trace."""
    return {
        "os.system": [f"touch {target}"],
        "subprocess.run": [["touch", target]],
        "builtins.eval": [f"open({target!r}, 'w')"],
        "builtins.exec": [f"open({target!r}, 'w')"],
        # Would empty every table, this job's own row included.
        "django.core.management.call_command": ["flush", "--no-input"],
        # Inside an allowed module, but only imported there: it is os.system.
        "shop.tasks.system": [f"touch {target}"],
    }


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_worker_refuses_rows_naming_forbidden_functions(run_manage, tmp_path):
    target = str(tmp_path / "pwned")
    Mark.objects.create(label="still here")
    rows = forbidden_rows(target)
    for name, args in rows.items():
        Job.objects.create(name=name, args=args, max_attempts=3)

    code, out, err = run_manage("flush_queue")

    assert code == 0, err
    assert out.strip().endswith(f"0 succeeded, 0 to retry, {len(rows)} failed.")
    assert not (tmp_path / "pwned").exists()
    assert list(Mark.objects.values_list("label", flat=True)) == ["still here"]
    for job in Job.objects.all():
        # Failed for good at once: no retry can make it allowed.
        assert (job.status, job.attempts) == (Job.Status.FAILED, 1)
        assert job.errors.get().exception.startswith(
            f"async_jobs.allowlist.FunctionNotAllowed: {job.name!r} is "
        )
    assert Job.objects.count() == len(rows)


def nested(leaves, keys, *, tuples: bool = False):
    def containers(children):
        found = st.lists(children, max_size=4) | st.dictionaries(
            keys, children, max_size=4
        )
        return found | st.tuples(children, children) if tuples else found

    return st.recursive(leaves, containers, max_leaves=10)


# What JSON holds on every database: the rule must refuse none of it.
plain_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8
)
plain = nested(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(min_value=-1e16, max_value=1e16, exclude_min=True, exclude_max=True)
    | plain_text,
    plain_text,
)
# JSON's own types, to their edges: every float, every code point (NUL and
# lone surrogates too). Whether these are refused is the rule's finest call.
any_text = st.text(st.characters(exclude_categories=()), max_size=8)
json_typed = nested(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text, any_text
)
# Anything at all: also tuples, non-str keys, types JSON has no room for.
anything = nested(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | any_text
    | st.binary(max_size=4)
    | st.sets(st.integers(), max_size=2)
    | st.frozensets(st.integers(), max_size=2)
    | st.datetimes()
    | st.dates()
    | st.decimals(allow_nan=False)
    | st.complex_numbers(allow_nan=False),
    any_text | st.integers() | st.booleans(),
    tuples=True,
)


def call_of(kind: str, values, keys):
    return st.tuples(
        st.just(kind),
        st.lists(values, max_size=4),
        st.dictionaries(keys, values, max_size=4),
    )


calls = (
    call_of("plain", plain, plain_text)
    | call_of("json typed", json_typed, any_text)
    | call_of("anything", anything, any_text)
)


def same(sent, received) -> bool:
    """Equal, and of the same JSON type all the way down (1.0 is not 1)."""
    if sent is None or isinstance(sent, bool | int | float | str):
        return type(sent) is type(received) and sent == received
    if isinstance(sent, list):
        return (
            isinstance(received, list)
            and len(sent) == len(received)
            and all(map(same, sent, received))
        )
    return (
        isinstance(received, dict)
        and sent.keys() == received.keys()
        and all(same(sent[key], received[key]) for key in sent)
    )


@settings(max_examples=200, deadline=None)
@given(calls)
# The edges PostgreSQL's jsonb taught us, tried on every run.
@example(("json typed", ["\ud800"], {}))
@example(("json typed", [], {"\udfff": 1}))
@example(("json typed", ["a\x00"], {}))
@example(("json typed", [], {"\x00": 1}))
@example(("json typed", [1e23], {}))
@example(("json typed", [1e16], {}))
@example(("plain", [9999999999999998.0, -0.0, 5e-324, 2**70], {}))
def test_scheduled_arguments_reach_the_function_equal_or_are_refused(call):
    kind, args, kwargs = call
    with transaction.atomic():  # a database error fails this example only
        before = Job.objects.count()
        try:
            job = schedule("shop.tasks.echo", args=args, kwargs=kwargs)
        except TypeError as exc:
            assert kind != "plain", f"plain JSON refused: {exc}"
            assert str(exc).startswith(("args", "kwargs"))  # names where
            assert Job.objects.count() == before
            event("refused")
            return
        event(f"accepted {kind}")

        received = job.execute()  # the function gets them from the row

        assert same({"args": args, "kwargs": kwargs}, received)
        job.refresh_from_db()
        assert same(received, job.result)
