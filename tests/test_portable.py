"""``training.portable``: paths in shipped metadata are relative to the repository or a bare name."""

from __future__ import annotations

from training.portable import REPO, local_path, portable_command, portable_path


def test_paths_inside_or_beside_the_repository_are_relative_to_it_others_a_name(tmp_path):
    assert portable_path(REPO / "runs" / "r1") == "runs/r1"
    beside = REPO.parent / "shared" / "data" / "imagenette2-train"
    assert portable_path(beside) == "../shared/data/imagenette2-train"
    assert local_path(portable_path(beside)).resolve() == beside.resolve()
    if not tmp_path.is_relative_to(REPO.parent):
        assert portable_path(tmp_path / "flowers") == "flowers"
    assert local_path("/x/y") == local_path("/x/y").resolve()  # absolute: as it is


def test_commands_keep_everything_but_absolute_paths():
    command = "python -m training fit --data /nowhere/data/flowers --runs-dir=/tmp/x/runs --epochs 3"
    if not REPO.parent.is_relative_to("/nowhere"):
        assert portable_command(command) == (
            "python -m training fit --data flowers --runs-dir=runs --epochs 3"
        )
    assert portable_command("python -m training fit --data packs/a.npz") == (
        "python -m training fit --data packs/a.npz"
    )
