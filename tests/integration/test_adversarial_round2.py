"""Adversarial review, round two, of the fixes for issue 17: attacks through real gVisor sandboxes.

Each test attacks one of the new defences and asserts the honest verdict, and that the innocent samples
judged after the attacker in the same batch (one sandbox, one driver) are still judged right.
"""

from __future__ import annotations

import pytest

from sandbox.models import Verdict
from sandbox.runner import Runner
from tests.integration.test_judge_isolation import printing, runner, stdio, with_range_innocents  # noqa: F401

pytestmark = pytest.mark.integration

# -- a careless eval checker hands a sample's output to its judge: the judge then turns on its template --------
# The judge runs under the template's uid, so it may signal it: kill it, stop it, or stop it and leave.
KILL_TEMPLATE = "__import__('os').kill(__import__('os').getppid(), 9) or []"
STOP_TEMPLATE = "__import__('os').kill(__import__('os').getppid(), 19) or []"


@pytest.mark.parametrize("attack", [KILL_TEMPLATE, STOP_TEMPLATE], ids=["kill", "stop"])
def test_a_judge_that_signals_its_template_harms_only_its_own_sample(runner: Runner, attack: str) -> None:  # noqa: F811
    [attacker] = with_range_innocents(runner, stdio(printing(attack)))
    assert attacker.verdict is not Verdict.passed and attacker.verdict is not Verdict.infra_error, attacker


# The judge itself (not a leftover) stays alive: it reports its own sample at once, so the supervisor moves on
# to the next sample of the slot and sends its request to the control socket, where this judge, still alive,
# takes it and answers for that sample: every case passed. Its template is still waiting for it to end.
HOLD_CODE = r'''
import json, sys
frame = sys._getframe()
while frame is not None and not ('control' in frame.f_locals and 'sample_id' in frame.f_locals):
    frame = frame.f_back
control, own = frame.f_locals['control'], frame.f_locals['sample_id']

def passed(sample_id):
    outcomes = [{'index': i, 'status': 'passed'} for i in range(3)]
    control.socket.sendall(json.dumps({'sample_id': sample_id, 'load': 'loaded', 'outcomes': outcomes,
                                       'completed': True}).encode())

passed(own)
while True:
    message, fds, _ = control.receive()
    if message.get('op') == 'judge':
        passed(message['sample_id'])
'''
HOLD = f"exec({HOLD_CODE!r}, {{}}) or []"


def test_a_judge_that_stays_alive_cannot_answer_for_the_next_sample(runner: Runner) -> None:  # noqa: F811
    [attacker] = with_range_innocents(runner, stdio(printing(HOLD)))
    assert attacker.verdict is Verdict.error, attacker  # its values made its judge send a report itself
