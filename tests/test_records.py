"""
The shared records (remoteio_server.records) and the worker pipe's messages
(remoteio_server.messages): what one process writes, another reads back, and
what is torn, foreign or garbled is never taken for a record.
"""

import os
import struct

import pytest

from remoteio_server import messages, records
from remoteio_server.messages import Electrical, End, Err, Event, Ok, Op, Ready, Request

OUTPUT_HIGH = {'function': 'output', 'state': True, 'frequency': None, 'pull': None}


@pytest.fixture
def table():
    table = records.RecordTable()
    yield table
    table.close()


def test_a_record_reads_back_as_written(table):
    writer = table.writer(17)
    assert table.read(17) is None                        # never written
    writer.publish(5, OUTPUT_HIGH, live=True)
    assert table.read(17) == records.Record(os.getpid(), 5, 0, 'output', True, None, None, True)
    writer.publish(6, {'function': 'output', 'state': 0.25, 'frequency': 50.0, 'pull': None},
                   live=True)
    assert table.read(17).as_read() == {'function': 'output', 'state': 0.25,
                                        'frequency': 50.0, 'pull': None}
    writer.publish(7, {'function': 'input', 'state': False, 'frequency': None, 'pull': 'up'},
                   live=False, failed=6)
    assert table.read(17)[1:] == (7, 6, 'input', False, None, 'up', False)
    assert table.read(16) is None                        # its neighbours are untouched


def test_a_record_of_another_process_is_read_in_this_one(table):
    pid = os.fork()
    if pid == 0:                                          # the writer, as a worker would
        table.writer(4).publish(9, OUTPUT_HIGH, live=True)
        os._exit(0)
    os.waitpid(pid, 0)
    record = table.read(4)
    assert record.pid == pid and record.taken == 9 and record.state is True


def test_torn_or_garbled_records_are_never_taken(table):
    writer = table.writer(5)
    writer.publish(3, OUTPUT_HIGH, live=True)
    slot = 5 * records.SLOT_SIZE
    view = table._map
    good = bytes(view[slot:slot + records.SLOT_SIZE])
    # being written: the head version odd
    struct.pack_into('<Q', view, slot, struct.unpack_from('<Q', good)[0] + 1)
    assert table.read(5) is None
    # half written: head and tail versions differ
    view[slot:slot + records.SLOT_SIZE] = good
    struct.pack_into('<Q', view, slot, struct.unpack_from('<Q', good)[0] + 2)
    assert table.read(5) is None
    # a field changed without its CRC
    view[slot:slot + records.SLOT_SIZE] = good
    view[slot + 8] ^= 0xFF
    assert table.read(5) is None
    view[slot:slot + records.SLOT_SIZE] = good
    assert table.read(5).taken == 3


def test_a_withdrawn_or_cleared_record_is_no_record(table):
    writer = table.writer(6)
    writer.publish(1, OUTPUT_HIGH, live=True)
    writer.withdraw()
    assert table.read(6) is None
    writer.publish(2, OUTPUT_HIGH, live=True)
    table.clear(6)
    assert table.read(6) is None


def test_gpios_without_a_slot_have_no_record(table):
    assert table.writer(records.SLOTS) is None
    assert table.read(records.SLOTS) is None and table.read(-1) is None


@pytest.mark.parametrize('message', [
    Ready(1234), Ok(3, {'state': True}), Err(4, messages.pin_error('limit', 'full'), 7),
    End(5, 'completed', None), End(6, 'failed', {'code': 'x'}), Event(12.5, 1, 3),
    Electrical('output', 0.25, 100.0, None, 12.5), Electrical('input', 0, None, 'up', 13.0),
])
def test_worker_replies_survive_the_pipe(message):
    assert messages.decode_reply(messages.encode(message)) == message


def test_requests_survive_the_pipe():
    request = Request(9, Op.TASK, {'kind': 'on', 'duration': 0.1}, 42)
    decoded = messages.decode_request(messages.encode(request))
    assert decoded == (9, 'task', {'kind': 'on', 'duration': 0.1}, 42)
    assert decoded.op == Op.TASK


def test_a_history_is_spliced_into_its_reply():
    raw = messages.ok_then_history(3, {'writes': 2}, ['{"t":1.0,"state":1}', '{"t":2.0,"state":0}'])
    assert messages.decode_reply(raw) == Ok(3, {'writes': 2, 'history': [
        {'t': 1.0, 'state': 1}, {'t': 2.0, 'state': 0}]})
