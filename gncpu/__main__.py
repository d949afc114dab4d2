"""Command line: ``python -m gncpu bench ...`` and ``python -m gncpu config``."""
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = {"bench": "side-by-side speed table (see 'bench --help')",
                "config": "how gncpu was built: OpenMP, threads, SIMD path"}
    if not argv or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"python -m gncpu: unknown command {argv[0]!r}; choose bench or config",
                  file=sys.stderr)
        print("usage: python -m gncpu {bench,config} [options]\n" +
              "\n".join(f"  {name:8s} {text}" for name, text in commands.items()),
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "config":
        from . import show_config
        show_config()
        return 0
    from .bench import main as bench
    return bench(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
