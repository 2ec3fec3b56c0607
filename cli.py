"""What every command shares, without torch (so that vector.py and the page's server start light):
the errors a command reports as one line, running a command's main, output streams that survive
their reader, and the argument parser with its conventions.

    python vector.py map.tif --out layers.gpkg --simplify 1    # every command: one CLI convention

Library code raises InputError (bad input) or Cancelled (a translation stopped on request);
run_command turns them, and file system errors, into `error: ...` and an exit status.
"""
import argparse
import difflib
import errno
import os
import sys

from tqdm import tqdm


class InputError(ValueError):
    """Bad input (a file, a flag, the data): the message names it and says what was expected.
    Library code raises it; only a command's main turns it into one line and an exit status."""


class Cancelled(Exception):
    """A translation stopped before its end by its cancel hook (tiles.Engine.run's `cancel`: Ctrl-C,
    a Stop button, a client gone, a time limit); the message says why. What it was writing is removed."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (its type where it has none), cut to limit chars:
    enough to say what went wrong inside a one-line error."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def run_command(main, argv=None):
    """Run a command's main(argv): bad input, a failing file system, a cancelled translation or Ctrl-C
    before the command's own handling end as one line on stderr and a non-zero exit status, never a
    traceback."""
    for stream in (sys.stdout, sys.stderr):  # file names need not be UTF-8; never crash printing one
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return main(argv)
    except (InputError, Cancelled) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        if e.errno in (errno.EPIPE,):
            os._exit(1)  # the reader went away (`| head`): nothing left to tell anyone
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"error: {where}{e.strerror or e}")
    except KeyboardInterrupt:
        sys.exit("error: interrupted")


class SafeStream:
    """A text stream whose writes never raise. When its reader goes away (`| tee log` stopped by
    Ctrl-C, `| head`, a closed terminal) the file descriptor is pointed at /dev/null, so neither a
    later print, a progress bar nor the interpreter's final flush can fail."""

    def __init__(self, stream):
        self.stream = stream

    def _dropped(self):
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.stream.fileno())
            os.close(null)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text):
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            self._dropped()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self._dropped()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def protect_output():
    """Make stdout and stderr safe to write to whatever happens to their readers."""
    if sys.stdout is not None and not isinstance(sys.stdout, SafeStream):
        sys.stdout = SafeStream(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, SafeStream):
        sys.stderr = SafeStream(sys.stderr)


def report(message: str):
    """One line on stderr that does not break a progress bar."""
    tqdm.write(message, file=sys.stderr)


def parse_list(text: str, flag: str, kind=float, count: int | None = None) -> list:
    """'3,2,1' -> [3, 2, 1]; a clear InputError naming the flag otherwise."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None
    if count is not None and len(values) != count:
        raise InputError(f"{flag} {text!r}: expected {count} comma-separated values")
    return values


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, unless the help already states one, the flag is
    required, or there is no default to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line instead of a usage dump, suggests the
    flag a misspelled one was meant to be, takes every flag spelt with underscores too (--load_size is
    --load-size), takes other spellings of a flag silently (`alias`, unlisted in --help) and flags
    renamed since (with a notice), and runs `hooks` over the parsed namespace (official.py's)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.renamed, self.aliases, self.hooks, self.argv = {}, {}, [], []

    def rename(self, old: str, new: str):
        """Accept the old flag name for a while, as `new`, with a one-line notice on stderr."""
        self.renamed[old] = new

    def alias(self, other: str, flag: str):
        """Take `other` (or its underscore spelling) as `flag`, silently: another name for the same
        thing, such as the official code's, which --help does not list a second time."""
        self.aliases[other] = flag

    def spelled(self, name: str, known: set) -> str:
        """The flag a command-line name stands for: itself, its hyphenated form, an alias of either,
        or a renamed flag (with a notice)."""
        hyphenated = "--" + name[2:].replace("_", "-")
        for candidate in (name, hyphenated):
            if candidate in known:
                return candidate
            if candidate in self.aliases:
                return self.aliases[candidate]
        if name in self.renamed:
            print(f"notice: {name} is now {self.renamed[name]}; please use the new name", file=sys.stderr)
            return self.renamed[name]
        return name

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else map(str, args))
        known = {s for action in self._actions for s in action.option_strings}
        for i, arg in enumerate(args):
            if arg == "--":
                break
            name, eq, value = arg.partition("=")
            if name.startswith("--"):
                args[i] = self.spelled(name, known) + eq + value
        self.argv = args
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        """argparse's parse_args, with the hooks run before unknown flags are reported (a hook may
        require a flag, which argparse reports first)."""
        namespace, extras = self.parse_known_args(args, namespace)
        for hook in self.hooks:
            try:
                hook(namespace)
            except InputError as e:
                self.error(str(e))
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def error(self, message):
        known = [s for action in self._actions if action.help != argparse.SUPPRESS
                 for s in action.option_strings if s.startswith("--")]
        unknown = [a.partition("=")[0] for a in self.argv if a.startswith("--") and a.partition("=")[0] not in known]
        hints = [f"did you mean {near[0]}?" for a in unknown if (near := difflib.get_close_matches(a, known, 1, 0.75))]
        self.exit(2, f"{self.prog}: error: {message}{'; ' if hints else ''}{' '.join(hints)} (see --help)\n")


def command_parser(description: str) -> Parser:
    """The parser every command starts from: one-line errors, defaults shown in --help, no abbreviations."""
    return Parser(description=description, allow_abbrev=False, formatter_class=HelpFormatter)
