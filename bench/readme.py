"""
``python -m bench.readme [JSON] [--readme PATH] [--allow-partial]``: write
the README's performance table from a benchmark run's JSON (default
``bench/results/latest.json``).

Only the part of the README between the two marker comments
``<!-- bench-table:start -->`` and ``<!-- bench-table:end -->`` is
rewritten: the run's machine line, a table of the figures compared with the
reference server and the TCP echo (per placement), a table of the figures of
our server alone, one line listing the checks that had to count 0 and did,
and one line naming the targets missed, if any. The
numbers come from the JSON only; nobody edits them by hand.

A quick run (``--quick``) or a run of some phases (``--only``) is refused
unless ``--allow-partial`` is given (to check the output, e.g. into a copy of
the README with ``--readme``).
"""

import argparse
import json
import sys
from pathlib import Path

from bench.figures import format_number, format_range

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO_ROOT / 'bench' / 'results' / 'latest.json'
DEFAULT_README = REPO_ROOT / 'README.md'
START = '<!-- bench-table:start -->'
END = '<!-- bench-table:end -->'
RESULT = {True: '✓', False: '**missed**', None: ''}


def cell(text):
    """Text made safe for a Markdown table cell."""
    return str(text).replace('|', '\\|').replace('\n', ' ')


def number(value, low, high, unit):
    """``250 µs [176–251]``: a median of repetitions and their range."""
    text = format_number(value, unit)
    spread = format_range(low, high, unit)
    return f'{text} [{spread}]' if spread else text


def result(figure):
    if figure.get('error'):
        return 'ERROR'
    if figure.get('target') and figure.get('value') is None:
        return '**missed**'
    return RESULT[figure.get('passed')]


def ratio(figure):
    value = figure.get('ratio')
    if value is None:
        return ''
    text = f'{value:.2f}×'
    return f'**{text}**' if figure.get('passed') is False else text


def machine_line(report):
    """One sentence: which run, where, on what."""
    machine = report['machine']
    plan = report['plan']
    started = report['started'].replace('T', ' ').replace('+00:00', ' UTC')
    load = machine.get('load_average_at_start') or []
    commit = (machine.get('git_commit') or 'unknown')[:10]
    changed = machine.get('git_changed') or []
    dirty = f' with uncommitted changes in {len(changed)} files' if changed else ''
    only = f', only {", ".join(report["only"])}' if report.get('only') else ''
    load_text = f', load average {load[0]:.1f} at the start' if load else ''
    return (f'Run of {started} ({plan["name"]}{only}, {report["seconds"]:.0f} s, '
            f'{plan.get("repeats", 1)} repetitions per comparison), commit {commit}{dirty}: '
            f'{machine["cpu_model"]}, {machine["nproc"]} CPUs, Python {machine["python"]}, '
            f'gpiozero {machine.get("gpiozero")}{load_text}.')


def strip_placement(figure):
    name, placement = figure['name'], figure.get('placement')
    suffix = f' [{placement}]'
    return name[:-len(suffix)] if placement and name.endswith(suffix) else name


def baseline(figure):
    if figure.get('baseline') is None:
        return ''
    name = figure.get('baseline_name')
    text = number(figure['baseline'], figure.get('baseline_low'), figure.get('baseline_high'),
                  figure['unit'])
    return f'{name}: {text}' if name else text


def echo(figure):
    if figure.get('echo_us') is None:
        return ''
    return number(figure['echo_us'], figure.get('echo_low_us'), figure.get('echo_high_us'), 'µs')


def echo_cost(figure):
    cost = figure.get('echo_ratio')
    return f'{cost:.1f}×' if cost is not None else ''


def target(figure):
    return figure.get('target') or ''


def compared_table(rows):
    lines = ['| figure | placement | our server | baseline | ratio | TCP echo | in echo '
             'round trips | target | |',
             '|---|---|---|---|---|---|---|---|---|']
    for f in rows:
        lines.append('| ' + ' | '.join(cell(c) for c in (
            strip_placement(f), f['placement'],
            number(f['value'], f.get('low'), f.get('high'), f['unit']),
            baseline(f), ratio(f), echo(f), echo_cost(f), target(f), result(f))) + ' |')
    return lines


def alone_table(rows):
    lines = ['| figure | value | baseline | ratio | target | |', '|---|---|---|---|---|---|']
    for f in rows:
        value = (f'error: {f["error"]}' if f.get('error') else
                 number(f['value'], f.get('low'), f.get('high'), f['unit']) if f['unit'] else '')
        lines.append('| ' + ' | '.join(cell(c) for c in (
            f['name'], value, baseline(f), ratio(f), target(f), result(f))) + ' |')
    return lines


def missed_line(figures):
    missed = [f for f in figures if f.get('passed') is False or f.get('error')
              or (f.get('target') and f.get('value') is None)]
    if not missed:
        return 'Every target met.'
    names = []
    for f in missed:
        if f.get('error'):
            names.append(f'{f["name"]} (error)')
        elif f.get('ratio') is not None and '×' in (f.get('target') or ''):
            names.append(f'{f["name"]} ({f["ratio"]:.2f}×, target {f["target"]})')
        else:
            names.append(f'{f["name"]} ({format_number(f["value"], f["unit"])}, '
                         f'target {f["target"]})')
    return f'Targets missed ({len(missed)}): ' + '; '.join(names) + '.'


def is_check(figure):
    """A count that must be 0 (writes lost, events amiss, …) and is."""
    return (figure['unit'] == 'count' and figure.get('target') == '≤ 0'
            and figure.get('passed') is True)


def checks_line(checks):
    if not checks:
        return []
    names = '; '.join(f['name'] for f in checks)
    return [f'Checks that must count 0, and did: {names}.', '']


def block(report):
    """The Markdown between the markers."""
    figures = report['figures']
    compared = [f for f in figures if f.get('placement')]
    checks = [f for f in figures if not f.get('placement') and is_check(f)]
    alone = [f for f in figures if not f.get('placement') and not is_check(f)]
    repeats = report['plan'].get('repeats', 1)
    lines = [START,
             '<!-- Written by `python -m bench.readme` from the benchmark\'s JSON: do not edit. -->',
             '', machine_line(report), '']
    if compared:
        lines += [f'Against the reference server and the TCP echo, each the median of {repeats} '
                  'repetitions [their range]; ratios within one placement:', '']
        lines += compared_table(compared) + ['']
    if alone:
        lines += ['Our server alone:', ''] + alone_table(alone) + ['']
    lines += checks_line(checks) + [missed_line(figures), END]
    return '\n'.join(lines)


def rewrite(text, new_block):
    """*text* with the part between the markers (inclusive) replaced by *new_block*."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f'the README must hold one {START} and, after it, one {END}')
    return text[:start] + new_block + text[end + len(END):]


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.readme',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('json', nargs='?', type=Path, default=DEFAULT_JSON,
                   help='the run\'s JSON (default: bench/results/latest.json)')
    p.add_argument('--readme', type=Path, default=DEFAULT_README,
                   help='the file to rewrite (default: the repository\'s README.md)')
    p.add_argument('--allow-partial', action='store_true',
                   help='accept a --quick or --only run (to check the output)')
    args = p.parse_args(argv)
    report = json.loads(args.json.read_text())
    partial = report['plan']['name'] != 'full' or report.get('only')
    if partial and not args.allow_partial:
        p.error(f'{args.json} is from a {report["plan"]["name"]} run'
                f'{" of some phases" if report.get("only") else ""}: the README takes a full '
                f'run (python -m bench), or give --allow-partial')
    text = args.readme.read_text()
    try:
        args.readme.write_text(rewrite(text, block(report)))
    except ValueError as exc:
        p.error(f'{args.readme}: {exc}')
    print(f'{args.readme}: table written from {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
