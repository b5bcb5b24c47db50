"""`python -m app.graphql.sdl [--check]`: write the code's schema to docs/schema.graphql, or
(with --check) exit 1 when the file differs from it. `make graphql-schema` runs the first."""

from __future__ import annotations

import sys

from app.graphql.schema import SDL_PATH, sdl


def main(argv: list[str]) -> int:
    current = sdl()
    if "--check" in argv:
        kept = SDL_PATH.read_text() if SDL_PATH.exists() else ""
        if kept != current:
            print(f"{SDL_PATH} differs from the code's schema: run make graphql-schema")
            return 1
        return 0
    SDL_PATH.write_text(current)
    print(f"wrote {SDL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
