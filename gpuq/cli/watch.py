"""A refreshing full-screen view without flicker (`gpuq status --watch`).

Each frame is written over the previous one: cursor home, every line followed by "erase to end
of line", then "erase below".  The screen is never cleared between frames (clearing is what
makes `watch`-style loops flicker), and the frame goes out in one write.  The alternate screen
keeps the user's scrollback intact; Ctrl-C restores the terminal.  Not on a terminal, frames are
printed one after another.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable

from gpuq.errors import GpuqError

ALT_SCREEN_ON, ALT_SCREEN_OFF = "\x1b[?1049h", "\x1b[?1049l"
CURSOR_OFF, CURSOR_ON = "\x1b[?25l", "\x1b[?25h"
HOME, ERASE_EOL, ERASE_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def frame(text: str, title: str, width: int, height: int) -> str:
    """One screenful: the title line, then the text cut to the terminal's size."""
    lines = [f"{title}    {time.strftime('%Y-%m-%d %H:%M:%S')}", ""] + text.splitlines()
    lines = [ln[:width] for ln in lines[:height]]
    return HOME + "".join(ln + ERASE_EOL + "\r\n" for ln in lines[:-1]) + lines[-1] + ERASE_EOL + ERASE_BELOW


def watch_screen(render: Callable[[], str], interval_s: float, title: str) -> None:
    if interval_s < 0.1:
        interval_s = 0.1
    out = sys.stdout
    tty = out.isatty()
    if tty:
        out.write(ALT_SCREEN_ON + CURSOR_OFF)
    try:
        while True:
            try:
                text = render()
            except GpuqError as e:  # the daemon restarting: keep watching
                text = f"gpuq: {e}"
            if tty:
                size = shutil.get_terminal_size()
                out.write(frame(text, f"Every {interval_s:g}s: {title}", size.columns, size.lines))
            else:
                out.write(text + "\n\n")
            out.flush()
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        if tty:
            out.write(CURSOR_ON + ALT_SCREEN_OFF)
            out.flush()
