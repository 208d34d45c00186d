"""Every file a history entry names is an output, whatever key ComfyUI files it under, and each node
naming a file has it (ComfyUI gives two output nodes that save the same image one file each)."""

from __future__ import annotations

from services.worker.outputs import output_files


def test_every_list_of_files_counts_and_other_values_are_ignored() -> None:
    entry = {
        "outputs": {
            "9": {
                "images": [{"filename": "clip.mp4", "subfolder": "video", "type": "output"}],
                "animated": [True],
            },
            "10": {
                "gifs": [{"filename": "loop.gif", "subfolder": "", "type": "output", "format": "image/gif"}]
            },
            "11": {"audio": [{"filename": "a.flac", "subfolder": "audio", "type": "output"}]},
            "12": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
            "13": {
                "text": ["a caption"],
                "images": [{"filename": "clip.mp4", "subfolder": "video", "type": "output"}],
            },
        }
    }
    files = output_files(entry)
    assert [(f.node_id, f.kind, f.subfolder, f.filename, f.type) for f in files] == [
        ("9", "images", "video", "clip.mp4", "output"),
        ("10", "gifs", "", "loop.gif", "output"),
        ("11", "audio", "audio", "a.flac", "output"),
        ("12", "images", "", "p.png", "temp"),
        ("13", "images", "video", "clip.mp4", "output"),
    ]


def test_a_job_without_outputs_has_none() -> None:
    assert output_files({"outputs": {}}) == [] and output_files({}) == []
