"""Attribute heaptrack peak-cost folded stacks to components.

Usage: heap-by-component.py PEAK.folded SESSIONS (see scripts/idle-heaptrack.sh)
Each stack (root first) is charged to the innermost frame of a crate that
owns the memory: generic containers (alloc, core, std, hashbrown, bytes,
smallvec, slab, tokio's task cells, futures) are skipped, so a tokio task is
charged to whoever spawned it and a Vec to whoever grew it.
"""
import re, sys, collections

CRATE = re.compile(r'C(?:s[0-9A-Za-z]*_)?(\d+)')
SKIP = {'alloc', 'core', 'std', 'hashbrown', 'bytes', 'smallvec', 'slab', 'tokio',
        'futures_util', 'futures_core', 'indexmap', 'tinyvec', 'n0_future',
        'tokio_util', 'pin_project', 'tracing', 'tracing_core', 'tracing_subscriber',
        'rustc_hash', 'arrayvec', 'sorted_index_buffer', '__rust_alloc', 'dashmap', 'crossbeam_utils',
        'crossbeam_epoch', 'papaya', 'seize', 'lru', 'moka', 'hash_map', 'once_cell',
        'bytes_utils', 'thingbuf', '__rustc', 'u8'}

def crate_of(frame):
    name = frame.split(' (')[0]
    if name.startswith('_R'):
        m = CRATE.search(name)
        if not m:
            return None
        n = int(m.group(1))
        start = m.end()
        if name[start] == '_':
            start += 1
        return name[start:start + n]
    if name.startswith('_$LT$'):
        inner = name[5:].split('$GT$')[0]
        parts = inner.split('$u20$as$u20$')
        for part in parts:
            part = part.lstrip('&').replace('$RF$', '')
            if '..' in part:
                return part.split('..')[0]
        return None
    if '::' in name:
        return name.split('::')[0].lstrip('<&')
    return None

def main():
    path, sessions = sys.argv[1], int(sys.argv[2])
    by = collections.Counter()
    where = collections.defaultdict(collections.Counter)
    total = 0
    for line in open(path):
        stack, _, cost = line.rstrip('\n').rpartition(' ')
        cost = int(cost)
        if cost <= 0:
            continue
        total += cost
        frames = stack.split(';')
        owner, site = 'other', frames[-1]
        for f in reversed(frames):
            c = crate_of(f)
            if c and c not in SKIP:
                owner, site = c, f.split(' (')[0]
                break
        by[owner] += cost
        where[owner][site[:160]] += cost
    print(f'total peak {total/1048576:.1f} MiB = {total/1024/sessions:.1f} KiB per session ({sessions})')
    for owner, cost in by.most_common(15):
        print(f'{owner:20s} {cost/1048576:8.2f} MiB {cost/1024/sessions:7.2f} KiB/session')
        for site, c in where[owner].most_common(6):
            print(f'    {c/1024/sessions:7.2f} KiB/s  {site}')

main()
