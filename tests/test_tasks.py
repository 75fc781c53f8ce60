"""The timing rules of timed tasks, as pure functions (no processes, no sockets)."""

import pytest

from remoteio_factory.tasks import PULSE_FPS, Task


def levels(task, until, step=0.001):
    """The (elapsed, level) at each change, sampling every *step* seconds."""
    changes, last, t = [], None, 0.0
    while t < until:
        level, _ = task.at(t)
        if level != last:
            changes.append((round(t, 3), level))
            last = level
        t += step
    return changes


def test_on_for_a_time_then_done():
    task = Task('on', duration=0.1)
    assert task.at(0) == (1.0, 0.1)
    assert not task.done(0.0999) and task.done(0.1)
    assert not task.endless and not task.uses_pwm


def test_on_without_time_is_endless():
    task = Task('on')
    assert task.endless and task.at(1e6) == (1.0, None) and not task.done(1e6)


def test_off_holds_for_its_time_and_is_instant_without():
    assert Task('off', duration=0.2).at(0) == (0.0, 0.2)
    assert Task('off').done(0)


def test_value_needs_pwm_only_between_0_and_1():
    assert Task('value', level=0.4).uses_pwm
    assert not Task('value', level=1).uses_pwm
    assert Task('value', level=0.4, duration=0.05).at(0.01) == (0.4, 0.05)


def test_blink_edges_are_absolute():
    task = Task('blink', on_time=0.02, off_time=0.03, n=3)
    assert task.end == pytest.approx(0.15)
    assert levels(task, 0.15) == [(0.0, 1.0), (0.02, 0.0), (0.05, 1.0), (0.07, 0.0),
                                  (0.1, 1.0), (0.12, 0.0)]
    # the deadline after many cycles is still exactly k * cycle (no drift)
    long = Task('blink', on_time=0.05, off_time=0.05)
    assert long.at(3600.0001)[1] == pytest.approx(3600.05, abs=1e-9)


def test_blink_ends_at_the_first_of_time_and_n():
    assert Task('blink', on_time=1, off_time=1, n=10, duration=3).end == 3
    assert Task('blink', on_time=1, off_time=1, n=1, duration=3).end == 2
    assert Task('blink').endless


def test_pulse_ramps_in_steps():
    task = Task('pulse', fade_in=0.1, fade_out=0.1, n=1)
    assert task.uses_pwm and task.end == pytest.approx(0.2)
    steps = levels(task, 0.2)
    values = [v for _, v in steps]
    assert values[0] == 0.0 and max(values) == 1.0
    assert len(steps) == 2 * 0.1 * PULSE_FPS
    assert all(b[0] - a[0] == pytest.approx(1 / PULSE_FPS, abs=0.0015) for a, b in zip(steps, steps[1:]))


def test_blink_with_fades_is_gpiozero_cycle():
    task = Task('blink', on_time=0.1, off_time=0.1, fade_in=0.04, fade_out=0.04)
    assert task.cycle == pytest.approx(0.28)
    assert task.at(0.05) == (1.0, pytest.approx(0.14))
    assert task.at(0.25) == (0.0, pytest.approx(0.28))


def test_active_low_inverts_levels():
    assert Task('on', active_high=False).at(0)[0] == 0.0
    assert Task('off', active_high=False).at(0)[0] == 1.0
    assert Task('value', level=0.25, active_high=False).at(0)[0] == 0.75


def test_unknown_kind():
    with pytest.raises(ValueError):
        Task('explode')
