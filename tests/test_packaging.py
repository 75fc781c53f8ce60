"""
The sdist is complete (tests, docs, examples, benchmarks, the Makefile and CI
script, the licence, the systemd unit) and its metadata is right. Built with
setuptools' own PEP 517 hook (what ``python -m build --sdist --no-isolation``
calls), offline, from a copy of the working tree.
"""

import email.parser
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Besides the packages: what the sdist must hold for its tests, demo and benchmarks to run.
SINGLE_FILES = ['LICENSE', 'README.md', 'Makefile', '.ci/run', 'pyproject.toml',
                'server/remoteio-server.service', 'tests/conftest.py',
                'remoteio_factory/py.typed', 'remoteio_factory/transport.py', 'server/daemon.py']
TREES = ['tests', 'docs', 'examples', 'bench']
NOT_SHIPPED = ('__pycache__', '.pytest_cache', 'results')     # bench/results: local runs
BUILD_PRODUCTS = ('.pyc', '.pyo', '.so', '.o', '.dylib', '.dll')


def _copy_tree(source, target):
    """Copy the working tree's regular files (not .git, caches, build output, FIFOs)."""
    for directory, dirs, files in os.walk(source):
        relative = os.path.relpath(directory, source)
        dirs[:] = [d for d in dirs if d not in NOT_SHIPPED and not d.endswith('.egg-info')
                   and not (relative == '.' and d in ('.git', '.venv', 'build', 'dist'))]
        os.makedirs(os.path.join(target, relative), exist_ok=True)
        for name in files:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                shutil.copy2(path, os.path.join(target, relative, name))


def _files_under(top):
    for directory, dirs, files in os.walk(os.path.join(ROOT, top)):
        dirs[:] = [d for d in dirs if d not in NOT_SHIPPED]
        for name in files:
            if not name.endswith(BUILD_PRODUCTS):
                yield os.path.relpath(os.path.join(directory, name), ROOT).replace(os.sep, '/')


@pytest.fixture(scope='module')
def sdist(tmp_path_factory):
    pytest.importorskip('setuptools', minversion='64')     # pyproject.toml's build requirement
    tmp = tmp_path_factory.mktemp('sdist')
    source, out = tmp / 'source', tmp / 'dist'
    _copy_tree(ROOT, source)
    out.mkdir()
    build = subprocess.run(
        [sys.executable, '-c',
         'import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))',
         str(out)], cwd=source, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    path = out / build.stdout.strip().splitlines()[-1]
    with tarfile.open(path) as tar:
        members = {m.name.split('/', 1)[1]: m for m in tar.getmembers() if '/' in m.name}
        pkg_info = tar.extractfile(next(m for m in tar.getmembers()
                                        if m.name.count('/') == 1 and m.name.endswith('/PKG-INFO')))
        metadata = email.parser.BytesParser().parse(pkg_info)
    return members, metadata


def test_sdist_holds_everything_to_test_run_and_benchmark(sdist):
    members, _ = sdist
    expected = SINGLE_FILES + [f for top in TREES for f in _files_under(top)]
    assert any(f.startswith('tests/emulation/') for f in expected) or not os.path.isdir(
        os.path.join(ROOT, 'tests', 'emulation'))
    missing = [f for f in expected if f not in members]
    assert missing == [], f'missing from the sdist: {missing}'
    assert members['.ci/run'].mode & 0o111, '.ci/run lost its executable bit'
    shipped_products = [f for f in members if f.endswith(BUILD_PRODUCTS) or '__pycache__' in f]
    assert shipped_products == []


def test_sdist_metadata(sdist):
    _, metadata = sdist
    classifiers = set(metadata.get_all('Classifier'))
    assert {
        'Development Status :: 4 - Beta',
        'License :: OSI Approved :: BSD License',
        'Operating System :: Microsoft :: Windows',
        'Operating System :: MacOS',
        'Operating System :: POSIX',
        'Operating System :: POSIX :: Linux',
        'Programming Language :: Python :: 3 :: Only',
        'Topic :: System :: Hardware',
    } <= classifiers
    versions = {c.rsplit(' :: ', 1)[1] for c in classifiers
                if c.startswith('Programming Language :: Python :: 3.')}
    assert versions == {'3.9', '3.10', '3.11', '3.12', '3.13'}
    assert metadata['Requires-Python'] == '>=3.9'
    urls = dict(u.split(', ', 1) for u in metadata.get_all('Project-URL'))
    assert {'Homepage', 'Documentation'} <= set(urls)
    # no invented hosts: until the project has a site, only its PyPI page
    assert all(u.startswith('https://pypi.org/project/remoteio-factory/') for u in urls.values())
    assert 'BSD-3-Clause' in (metadata['License-Expression'] or metadata['License'])
    assert 'LICENSE' in metadata.get_all('License-File')
