#!/usr/bin/env python3
"""The disk-objectstore side of basin's store benchmark, and the generator of the shared workload.

Two sub-commands:

  gen   Generate the workload once, into a binary data file that both sides read, so disk-objectstore
        and basin see byte-identical objects and identical random orders:
          two sets of N objects (random, incompressible, sizes uniform in [min, max]) drawn with
          `random.Random(seed)` and `random.Random(seed + 1)` (the scheme of peers/dos_bench.py, run 0),
          and the permutations the steps use (read orders, the has-probe order, the 10 % to delete).
        With --million-n it also writes the "1M objects of 0-1000 bytes" set (disk-objectstore's own
        published direct-to-pack workload) to a second file.
  run   Run the workload steps on a fresh disk-objectstore container (default config, as the peer
        measured it) and print/write JSON timings. `--million FILE` runs the direct-to-pack + bulk read
        of the million set instead.

Data file layout (all integers little-endian):
  b"BNBDATA1" | u32 set_count | set_count x (u64 count | count x (u32 len | len bytes))
              | u32 list_count | list_count x (u64 count | count x u32)
Sets: [contents, contents2]. Lists: [a2_order, c_order, c2_order, probe_order, delete_order]
  a2/c/c2 orders are permutations of 0..N over `contents`; probe_order is a permutation of 0..2N where
  i < N names contents[i] and i >= N names the unknown key f"{i - N:064x}"; delete_order lists indices
  into contents + contents2 (0..2N), the first 2N // 10 of a shuffled 0..2N.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import struct
import sys
import time
from pathlib import Path

MAGIC = b'BNBDATA1'


def draw_objects(count: int, min_size: int, max_size: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = rng.randint(min_size, max_size)
        out.append(rng.randbytes(size))
    return out


def write_data(path: Path, sets: list[list[bytes]], lists: list[list[int]]) -> None:
    with open(path, 'wb') as fh:
        fh.write(MAGIC)
        fh.write(struct.pack('<I', len(sets)))
        for objects in sets:
            fh.write(struct.pack('<Q', len(objects)))
            for blob in objects:
                fh.write(struct.pack('<I', len(blob)))
                fh.write(blob)
        fh.write(struct.pack('<I', len(lists)))
        for items in lists:
            fh.write(struct.pack('<Q', len(items)))
            fh.write(struct.pack(f'<{len(items)}I', *items))


def read_data(path: Path) -> tuple[list[list[bytes]], list[list[int]]]:
    raw = path.read_bytes()
    if raw[:8] != MAGIC:
        raise SystemExit(f'{path}: not a benchmark data file')
    pos = 8

    def take(fmt: str):
        nonlocal pos
        vals = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return vals

    sets = []
    (set_count,) = take('<I')
    for _ in range(set_count):
        (count,) = take('<Q')
        objects = []
        for _ in range(count):
            (size,) = take('<I')
            objects.append(raw[pos:pos + size])
            pos += size
        sets.append(objects)
    lists = []
    (list_count,) = take('<I')
    for _ in range(list_count):
        (count,) = take('<Q')
        lists.append(list(take(f'<{count}I')))
    return sets, lists


def cmd_gen(args) -> None:
    n = args.num
    contents = draw_objects(n, args.min_size, args.max_size, args.seed)
    contents2 = draw_objects(n, args.min_size, args.max_size, args.seed + 1)
    rng = random.Random(args.seed + 7)

    def perm(count: int) -> list[int]:
        items = list(range(count))
        rng.shuffle(items)
        return items

    a2_order, c_order, c2_order = perm(n), perm(n), perm(n)
    probe_order = perm(2 * n)
    delete_order = perm(2 * n)[: (2 * n) // 10]
    write_data(Path(args.out), [contents, contents2], [a2_order, c_order, c2_order, probe_order, delete_order])
    payload = sum(map(len, contents))
    summary = {'objects': n, 'payload_bytes': payload, 'payload2_bytes': sum(map(len, contents2))}
    if args.million_out:
        million = draw_objects(args.million_n, 0, 1000, args.seed + 1_000_000)
        write_data(Path(args.million_out), [million], [perm(args.million_n)])
        summary['million_objects'] = args.million_n
        summary['million_bytes'] = sum(map(len, million))
    print(json.dumps(summary))


class Timings:
    """Collects wall times per step, printed as they happen and dumped as JSON at the end."""

    def __init__(self) -> None:
        self.steps: dict[str, dict] = {}

    def run(self, name: str, objects: int, payload_bytes: int, func, *args, **kwargs):
        start = time.perf_counter()
        out = func(*args, **kwargs)
        seconds = time.perf_counter() - start
        self.steps[name] = {'seconds': seconds, 'objects': objects, 'bytes': payload_bytes}
        print(f'  dos {name:18s} {seconds:9.3f} s', file=sys.stderr, flush=True)
        return out


def index_file_bytes(container_dir: Path) -> int:
    """Bytes of packs.idx plus its WAL/shm files: get_total_size counts only the main file, which stays
    tiny while the rows still sit in the WAL."""
    return sum(p.stat().st_size for p in container_dir.glob('packs.idx*'))


def run_workload(container_dir: Path, data: Path) -> dict:
    from disk_objectstore import CompressMode, Container

    (contents, contents2), (a2_order, c_order, c2_order, probe_order, delete_order) = read_data(data)
    n = len(contents)
    payload = sum(map(len, contents))
    payload2 = sum(map(len, contents2))
    t = Timings()
    container = Container(container_dir)
    container.init_container()

    keys = t.run('a_loose_write', n, payload, lambda: [container.add_object(x) for x in contents])

    def read_each(order: list[int]) -> None:
        wrong = sum(1 for i in order if container.get_object_content(keys[i]) != contents[i])
        if wrong:
            raise SystemExit(f'{wrong} objects read back wrong')

    t.run('a2_read_loose', n, payload, read_each, a2_order)
    t.run('b_pack', n, payload, container.pack_all_loose, compress=False)
    # disk-objectstore keeps the loose copies until clean_storage; basin's pack_loose removes them itself.
    t.run('b2_clean', n, 0, container.clean_storage, vacuum=False)
    counts = container.count_objects()
    if counts.loose != 0 or counts.packed != n:
        raise SystemExit(f'unexpected counts after packing: {counts}')
    t.run('c_read_packed', n, payload, read_each, c_order)

    def read_bulk() -> None:
        wanted = [keys[i] for i in c2_order]
        got = container.get_objects_content(wanted)
        if len(got) != n or any(got[keys[i]] != contents[i] for i in c2_order):
            raise SystemExit('bulk read returned wrong objects')

    t.run('c2_read_many', n, payload, read_bulk)
    probe = [keys[i] if i < n else f'{i - n:064x}' for i in probe_order]

    def has_probe() -> None:
        found = container.has_objects(probe)
        if sum(found) != n:
            raise SystemExit(f'has_objects found {sum(found)} of {n}')

    t.run('c3_has_many', 2 * n, 0, has_probe)

    def list_all() -> None:
        if len(list(container.list_all_objects())) != n:
            raise SystemExit('list_all_objects count is wrong')

    t.run('c4_list', n, 0, list_all)
    keys2 = t.run('d_write_packed', n, payload2, container.add_objects_to_pack, contents2, compress=False)
    all_keys = keys + keys2
    all_contents = contents + contents2

    def validate() -> None:
        issues = container.validate()
        if not issues.is_valid():
            raise SystemExit(f'validate found problems: {issues}')

    t.run('e_validate', 2 * n, payload + payload2, validate)
    doomed = [all_keys[i] for i in delete_order]
    deleted = t.run('f1_delete', len(doomed), 0, container.delete_objects, doomed)
    if len(deleted) != len(doomed):
        raise SystemExit(f'deleted {len(deleted)} of {len(doomed)}')
    doomed_set = set(delete_order)
    remaining_bytes = sum(len(x) for i, x in enumerate(all_contents) if i not in doomed_set)
    remaining = 2 * n - len(doomed)
    t.run('f2_repack', remaining, remaining_bytes, container.repack, compress_mode=CompressMode.KEEP)
    t.run('f3_clean_vacuum', remaining, 0, container.clean_storage, vacuum=True)
    survivors = [i for i in range(2 * n) if i not in doomed_set][:200]
    for i in survivors:
        if container.get_object_content(all_keys[i]) != all_contents[i]:
            raise SystemExit('an object read back wrong after repack')
    sizes = container.get_total_size()
    counts = container.count_objects()
    container.close()
    index_bytes = index_file_bytes(container_dir)
    return {
        'steps': t.steps,
        'sizes': {
            'objects': counts.packed,
            'pack_file_bytes': sizes.total_size_packfiles_on_disk,
            'index_bytes': index_bytes,
            'index_bytes_per_object': index_bytes / max(counts.packed, 1),
        },
    }


def drop_packs_from_page_cache(packs: Path) -> None:
    """Asks the kernel to drop the cached pages of every pack file (synced first, so clean)."""
    for path in packs.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_million(container_dir: Path, data: Path) -> dict:
    from disk_objectstore import Container

    (objects,), (order,) = read_data(data)
    n = len(objects)
    payload = sum(map(len, objects))
    t = Timings()
    container = Container(container_dir)
    container.init_container()
    keys = t.run('m1_million_write_packed', n, payload, container.add_objects_to_pack, objects, compress=False)

    def read_back() -> None:
        wanted = [keys[i] for i in order]
        got = container.get_objects_content(wanted)
        # objects can repeat (sizes 0..1000 include the empty object), so compare per key
        if any(got[keys[i]] != objects[i] for i in order):
            raise SystemExit('million read-back returned wrong objects')

    t.run('m2_million_read_many', n, payload, read_back)
    # The same read-back once the packs have left the page cache, as on the basin side.
    drop_packs_from_page_cache(container_dir / 'packs')
    t.run('m2c_million_read_many_uncached', n, payload, read_back)
    counts = container.count_objects()
    container.close()
    index_bytes = index_file_bytes(container_dir)
    return {
        'steps': t.steps,
        'sizes': {
            'objects': counts.packed,
            'index_bytes': index_bytes,
            'index_bytes_per_object': index_bytes / max(counts.packed, 1),
        },
    }


def cmd_run(args) -> None:
    import disk_objectstore

    container_dir = Path(args.dir)
    if container_dir.exists():
        shutil.rmtree(container_dir)
    if args.million:
        result = run_million(container_dir, Path(args.million))
    else:
        result = run_workload(container_dir, Path(args.data))
    result['tool'] = 'disk-objectstore'
    result['version'] = disk_objectstore.__version__
    result['python'] = sys.version.split()[0]
    result['maxrss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(container_dir)
    text = json.dumps(result, indent=1)
    if args.json_out:
        Path(args.json_out).write_text(text + '\n', encoding='utf8')
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='cmd', required=True)
    gen = sub.add_parser('gen', help='generate the shared workload data file(s)')
    gen.add_argument('-n', '--num', type=int, default=20000)
    gen.add_argument('--min-size', type=int, default=1024)
    gen.add_argument('--max-size', type=int, default=8192)
    gen.add_argument('-s', '--seed', type=int, default=42)
    gen.add_argument('-o', '--out', required=True)
    gen.add_argument('--million-n', type=int, default=1_000_000)
    gen.add_argument('--million-out', default=None)
    run = sub.add_parser('run', help='run the workload on disk-objectstore')
    run.add_argument('--data', help='data file from `gen` (the main workload)')
    run.add_argument('--million', help='million-object data file from `gen` (direct-to-pack + read back)')
    run.add_argument('-d', '--dir', required=True, help='container folder (created fresh, removed after)')
    run.add_argument('--json-out', default=None)
    args = ap.parse_args()
    if args.cmd == 'gen':
        cmd_gen(args)
    else:
        if not (args.data or args.million):
            ap.error('run needs --data or --million')
        cmd_run(args)


if __name__ == '__main__':
    main()
