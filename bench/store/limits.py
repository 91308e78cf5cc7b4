#!/usr/bin/env python3
"""Physical limits and the git anchor for the store benchmark, measured on the same bytes.

- fsync probe: median latency of write(4 KiB) + fsync of a fresh file (hardware context);
- durable sequential write: `dd ... conv=fdatasync` of exactly the payload size (and of every extra
  size asked with --size NAME=BYTES);
- cold read (after `echo 3 > /proc/sys/vm/drop_caches`, when permitted) and warm read of a file of the
  payload size with dd, then the removal of that file (unlink; on `-o discard` file systems the
  kernel waits for the device to discard its blocks);
- git anchor: `git fast-import` of the same blobs into a bare repository with core.compression 0 and
  pack.compression 0, then `git cat-file --batch` reading them in the benchmark's random order (c_order).

With --between-runs, only the durable write, warm read and removal of the payload size: run.sh takes
these after every run of the workload, as the disk's speed drifts within minutes.

Prints one JSON object (also written to --json-out). Uses only the standard library and dd/git.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dos_workload import read_data  # noqa: E402  (the data file format lives there)


def run_timed(cmd: list[str], stdin_path: Path | None = None, stdout=subprocess.DEVNULL) -> float:
    stdin = open(stdin_path, 'rb') if stdin_path else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        subprocess.run(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, check=True)
        return time.perf_counter() - start
    finally:
        if stdin_path:
            stdin.close()


def fsync_probe_ms(folder: Path, count: int = 100) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(4096)
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        fd = os.open(folder / f'probe{i}', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, block)
        os.fsync(fd)
        os.close(fd)
        latencies.append(time.perf_counter() - start)
    shutil.rmtree(folder)
    return statistics.median(latencies) * 1000


def dd_write_seconds(path: Path, size_bytes: int) -> float:
    """Durable sequential write of size_bytes: data and the final fdatasync, as dd reports it."""
    cmd = ['dd', 'if=/dev/zero', f'of={path}', 'bs=1M', f'count={size_bytes}', 'iflag=count_bytes',
           'conv=fdatasync', 'status=none']
    seconds = run_timed(cmd)
    if path.stat().st_size != size_bytes:
        raise SystemExit(f'dd wrote {path.stat().st_size} bytes, wanted {size_bytes}')
    return seconds


def remove_seconds(path: Path) -> float:
    """Removing a file the page cache holds whole: the unlink of its last name frees its pages
    and its blocks (and, on a file system mounted `-o discard`, waits for the device to discard
    them). A repack pays this for every old pack it replaces."""
    start = time.perf_counter()
    path.unlink()
    return time.perf_counter() - start


def drop_caches() -> str | None:
    """Returns None when caches were dropped, else the reason they could not be."""
    try:
        os.sync()
        with open('/proc/sys/vm/drop_caches', 'w', encoding='ascii') as fh:
            fh.write('3\n')
        return None
    except OSError as err:
        return f'not permitted ({err.strerror})'


def dd_read_seconds(path: Path) -> float:
    return run_timed(['dd', f'if={path}', 'of=/dev/null', 'bs=1M', 'status=none'])


def git_anchor(work: Path, blobs: list[bytes], order: list[int]) -> dict:
    repo = work / 'git-anchor.git'
    if repo.exists():
        shutil.rmtree(repo)
    subprocess.run(['git', 'init', '-q', '--bare', str(repo)], check=True)
    for key, value in (('core.compression', '0'), ('pack.compression', '0'), ('core.bigFileThreshold', '512m')):
        subprocess.run(['git', '-C', str(repo), 'config', key, value], check=True)
    stream = work / 'fast-import.stream'
    shas = []
    with open(stream, 'wb') as fh:
        for mark, blob in enumerate(blobs, start=1):
            fh.write(b'blob\nmark :%d\ndata %d\n' % (mark, len(blob)))
            fh.write(blob)
            fh.write(b'\n')
            shas.append(hashlib.sha1(b'blob %d\0' % len(blob) + blob).hexdigest())
    import_seconds = run_timed(['git', '-C', str(repo), 'fast-import', '--quiet'], stdin_path=stream)
    batch_input = work / 'cat-file.input'
    batch_input.write_text(''.join(shas[i] + '\n' for i in order), encoding='ascii')
    # One untimed pass checks that git returns every blob (and warms the cache as our reads are warm).
    out = subprocess.run(['git', '-C', str(repo), 'cat-file', '--batch'], stdin=open(batch_input, 'rb'),
                         capture_output=True, check=True).stdout
    expected = sum(len(blobs[i]) for i in order)
    if len(out) < expected or b' missing' in out:
        raise SystemExit('git cat-file --batch did not return every blob')
    catfile_seconds = statistics.median(
        run_timed(['git', '-C', str(repo), 'cat-file', '--batch'], stdin_path=batch_input) for _ in range(3))
    pack_bytes = sum(p.stat().st_size for p in (repo / 'objects' / 'pack').glob('*.pack'))
    shutil.rmtree(repo)
    stream.unlink()
    batch_input.unlink()
    return {'fast_import_s': import_seconds, 'cat_file_batch_s': catfile_seconds, 'blobs': len(blobs),
            'pack_bytes': pack_bytes, 'git': subprocess.run(['git', '--version'], capture_output=True,
                                                            text=True).stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data', required=True, help='data file from dos_workload.py gen')
    ap.add_argument('--dir', required=True, help='scratch folder on the same file system as the stores')
    ap.add_argument('--size', action='append', default=[], help='NAME=BYTES: also time a durable write of BYTES')
    ap.add_argument('--no-git', action='store_true')
    ap.add_argument('--between-runs', action='store_true',
                    help='only the limits the workload steps are judged by (durable write, warm read, '
                         'removal of the payload size): taken after each run of the workload, so that '
                         'the report compares the median of the steps with the median of their limits')
    ap.add_argument('--json-out', default=None)
    args = ap.parse_args()

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    (blobs, _blobs2), (_a2, c_order, *_rest) = read_data(Path(args.data))
    payload = sum(map(len, blobs))
    target = work / 'dd.payload'
    if args.between_runs:
        result: dict = {'payload_bytes': payload, 'dd_write_s': {'payload': dd_write_seconds(target, payload)}}
        dd_read_seconds(target)
        result['warm_read_s'] = statistics.median(dd_read_seconds(target) for _ in range(3))
        result['remove_s'] = remove_seconds(target)
        write_result(result, args.json_out)
        return
    result = {'payload_bytes': payload, 'fsync_probe_ms': fsync_probe_ms(work / 'probe')}
    result['dd_write_s'] = {'payload': dd_write_seconds(target, payload)}
    for spec in args.size:
        name, _, size = spec.partition('=')
        extra = work / f'dd.{name}'
        result['dd_write_s'][name] = dd_write_seconds(extra, int(size))
        result.setdefault('sizes', {})[name] = int(size)
        extra.unlink()
    refusal = drop_caches()
    result['cold_read_s'] = dd_read_seconds(target) if refusal is None else None
    result['cold_read_note'] = refusal or 'caches dropped'
    dd_read_seconds(target)
    result['warm_read_s'] = statistics.median(dd_read_seconds(target) for _ in range(3))
    result['remove_s'] = remove_seconds(target)
    if not args.no_git:
        result['git'] = git_anchor(work, blobs, c_order)
    write_result(result, args.json_out)


def write_result(result: dict, json_out: str | None) -> None:
    text = json.dumps(result, indent=1)
    if json_out:
        Path(json_out).write_text(text + '\n', encoding='utf8')
    print(text)


if __name__ == '__main__':
    main()
