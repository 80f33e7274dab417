import io

import pytest

from seqlstm.progress import (
    HEADER,
    ProgressPrinter,
    format_geometric_line,
    format_minibatch_line,
    is_geometric_update,
)


def test_schedule_geometric_updates():
    printed = [u for u in range(1, 600) if is_geometric_update(u)]
    assert printed == [1, 3, 7, 15, 31, 63, 127, 255, 511]


def test_schedule_rejects_zero():
    assert not is_geometric_update(0)


def test_header_exact_lines():
    lines = HEADER.split("\n")
    assert lines[0] == " average      since    average      since      examples"
    assert lines[1] == "    loss       last     metric       last              "
    assert lines[2] == " " + "-" * 54


def test_line_format_tutorial_first_line():
    line = format_geometric_line(1.6094, 1.6094, 0.88636, 0.88636, 44)
    assert line == "     1.61       1.61      0.886      0.886            44"


def test_line_format_column_widths():
    line = format_geometric_line(1.3, 1.23, 0.448, 0.447, 11365)
    assert line == "      1.3       1.23      0.448      0.447         11365"
    assert len(line) == 1 + 4 * 11 + 1 + 10


def test_line_format_three_significant_digits():
    line = format_geometric_line(0.123456, 12.3456, 0.0001234, 1.0, 7)
    assert line.split() == ["0.123", "12.3", "0.000123", "1", "7"]


def test_minibatch_line_format():
    line = format_minibatch_line(1, 10, 1.6094379, 0.886364, 440)
    assert (
        line == " Minibatch[   1-  10]: loss = 1.609438 * 440, metric = 88.64% * 440;"
    )


def run_printer(updates, freq=0):
    stream = io.StringIO()
    printer = ProgressPrinter(freq=freq, stream=stream)
    for loss_sum, metric_sum, samples in updates:
        printer.update(loss_sum, metric_sum, samples)
    return printer, stream.getvalue().splitlines()


def test_printer_writes_header_first():
    _, lines = run_printer([])
    assert lines == HEADER.split("\n")


def test_printer_since_last_covers_window():
    # Updates 1..3: a line after 1 (window {1}) and after 3 (window {2, 3}).
    updates = [(10.0, 4.0, 10), (20.0, 2.0, 10), (30.0, 0.0, 20)]
    _, lines = run_printer(updates)
    body = lines[3:]
    assert len(body) == 2
    assert body[0] == format_geometric_line(1.0, 1.0, 0.4, 0.4, 10)
    assert body[1] == format_geometric_line(
        60.0 / 40, 50.0 / 30, 6.0 / 40, 2.0 / 30, 40
    )


def test_printer_line_count_for_255_updates():
    _, lines = run_printer([(1.0, 0.5, 2)] * 255)
    assert len(lines) == 3 + 8
    assert lines[-1].split()[-1] == str(255 * 2)


def test_printer_freq_every_n():
    updates = [(2.0, 1.0, 2)] * 25
    _, lines = run_printer(updates, freq=10)
    assert lines == [
        format_minibatch_line(1, 10, 1.0, 0.5, 20),
        format_minibatch_line(11, 20, 1.0, 0.5, 20),
    ]


def test_printer_summary_only_with_freq():
    stream = io.StringIO()
    printer = ProgressPrinter(freq=0, stream=stream)
    printer.update(1.0, 1.0, 1)
    printer.summarize()
    assert "Finished Epoch" not in stream.getvalue()


def test_printer_summary_format():
    stream = io.StringIO()
    printer = ProgressPrinter(freq=100, stream=stream, num_epochs=5)
    printer.update(3.0, 1.0, 4)
    printer.summarize()
    line = stream.getvalue().strip()
    assert line.startswith(
        "Finished Epoch[1 of 5]: [Training] loss = 0.750000 * 4, metric = 25.00% * 4 "
    )
    assert line.endswith("samples/s);")


def test_printer_report_value_once_per_change():
    stream = io.StringIO()
    printer = ProgressPrinter(freq=1, stream=stream)
    for text in ["Learning rate per 1 samples: 0.0005"] * 3 + [
        "Learning rate per 1 samples: 0.001"
    ]:
        printer.report_value("lr", text)
    assert stream.getvalue().splitlines() == [
        "Learning rate per 1 samples: 0.0005",
        "Learning rate per 1 samples: 0.001",
    ]


def test_printer_final_error_line():
    stream = io.StringIO()
    ProgressPrinter(freq=1, stream=stream).write_final_error(1 / 3)
    assert stream.getvalue() == " error: 0.333333\n"


def test_printer_state_round_trip():
    updates = [(1.0 + k, 0.5, 3) for k in range(9)]
    _, whole_lines = run_printer(updates)
    first, first_lines = run_printer(updates[:5])
    stream = io.StringIO()
    resumed = ProgressPrinter(freq=0, stream=stream)
    resumed.load_state_dict(first.state_dict())
    for update in updates[5:]:
        resumed.update(*update)
    resumed_lines = stream.getvalue().splitlines()[3:]
    assert first_lines + resumed_lines == whole_lines


def test_printer_rejects_negative_freq():
    with pytest.raises(ValueError, match="freq"):
        ProgressPrinter(freq=-1)
