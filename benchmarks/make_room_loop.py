"""The room-scale development proxy of issue 13: a full 360-degree lap of a synthetic room.

Usage: .venv/bin/python benchmarks/make_room_loop.py OUT_DIR [--frames 1000] [--seed 0]
       [--block 50] [--query-every 5]

Renders `--frames` frames along one whole lap of the room (640x480, sensor noise, motion
blur, slow lighting drift) into OUT_DIR/scene (ACE layout, train split, with depth), and
writes OUT_DIR/queries/test: links to every `--query-every`-th frame of the odd blocks of
`--block` frames. The even blocks (500 frames by default) are the mapping frames:

    .venv/bin/ace-ros map OUT_DIR/scene --split train --block-split 50:0 -o room.ace --preset cpu
    .venv/bin/ace-ros evaluate room.ace OUT_DIR/queries --split test

Queries sit between mapping blocks, as in a real scene whose frames were held out in
interleaved chunks: a robot's room is seen from every side, not from one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ace_ros.data.synthetic import SyntheticSceneConfig, write_synthetic_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir')
    parser.add_argument('--frames', type=int, default=1000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--block', type=int, default=50)
    parser.add_argument('--query-every', type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out_dir)
    scene = out / 'scene'
    if not (scene / 'train' / 'rgb').is_dir():
        write_synthetic_scene(scene, SyntheticSceneConfig(
            seed=args.seed, n_train=args.frames, n_test=0, noise_std=2.0, motion_blur_px=3.0,
            lighting_change=0.1, write_depth=True))
    names = sorted(p.stem for p in (scene / 'train' / 'rgb').iterdir())
    queries = [name for i, name in enumerate(names)
               if (i // args.block) % 2 == 1 and i % args.query_every == args.query_every // 2]
    for folder, suffix in (('rgb', '.png'), ('poses', '.txt'), ('calibration', '.txt')):
        target = out / 'queries' / 'test' / folder
        target.mkdir(parents=True, exist_ok=True)
        for name in queries:
            link = target / (name + suffix)
            if not link.exists():
                os.symlink((scene / 'train' / folder / (name + suffix)).resolve(), link)
    print(f'{len(names)} frames in {scene}; {len(queries)} queries in {out / "queries"}')


if __name__ == '__main__':
    main()
