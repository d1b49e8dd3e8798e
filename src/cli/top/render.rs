//! Drawing a [`View`] with ratatui: the header, one row per worker, the
//! recent events. A terminal too small gets what fits (the table keeps
//! its header and as many rows as there is room for; columns are cut).

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::model::{Row, View};
use crate::proto::state::WorkerState;

/// Widths that fit 80 columns with the spacing (69 + 11): a PID takes up
/// to 7 digits (Linux's largest `pid_max` is 4194304), a state 8 letters.
const COLUMNS: [(&str, u16); 12] = [
    ("SLOT", 4),
    ("PID", 7),
    ("GEN", 3),
    ("STATE", 8),
    ("AGE", 6),
    ("REQ/S", 6),
    ("CONNS", 5),
    ("WS", 3),
    ("RSS", 13),
    ("TREND", 3),
    ("BEAT", 5),
    ("LAG", 6),
];

/// Rows a frame needs to show everything (for `--once`).
pub fn height(view: &View) -> u16 {
    let events = view.events.len().max(1) as u16;
    3 + 1 + view.workers.len() as u16 + 1 + events + 1
}

pub fn draw(frame: &mut Frame, view: &View) {
    render(frame.area(), frame.buffer_mut(), view);
}

pub fn render(area: Rect, buf: &mut Buffer, view: &View) {
    let events = view.events.len().max(1) as u16 + 1;
    let [head, table, tail] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(2),
        Constraint::Length(events),
    ])
    .areas(area);
    let title_style = if view.connected {
        Style::default().add_modifier(Modifier::BOLD)
    } else {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    };
    let header = Paragraph::new(vec![
        Line::styled(view.title.clone(), title_style),
        Line::raw(view.phase.clone()),
        Line::raw(view.traffic.clone()),
    ]);
    ratatui::widgets::Widget::render(header, head, buf);

    let widths: Vec<Constraint> = COLUMNS
        .iter()
        .map(|(_, w)| Constraint::Length(*w))
        .collect();
    let titles = TableRow::new(COLUMNS.iter().map(|(t, _)| *t))
        .style(Style::default().add_modifier(Modifier::REVERSED));
    let rows: Vec<TableRow> = view.workers.iter().map(row).collect();
    let table_widget = Table::new(rows, widths).header(titles).column_spacing(1);
    ratatui::widgets::Widget::render(table_widget, table, buf);

    let lines: Vec<Line> = if view.events.is_empty() {
        vec![Line::raw("no worker exit or reload yet")]
    } else {
        view.events.iter().map(|e| Line::raw(e.clone())).collect()
    };
    let events_widget = Paragraph::new(lines).block(
        Block::default()
            .borders(Borders::TOP)
            .title("recent events"),
    );
    ratatui::widgets::Widget::render(events_widget, tail, buf);
}

fn row(r: &Row) -> TableRow<'static> {
    let style = match r.state {
        WorkerState::Ready => Style::default(),
        WorkerState::Booting => Style::default().fg(Color::Cyan),
        WorkerState::Retiring | WorkerState::Draining => Style::default().fg(Color::Yellow),
        WorkerState::Stopping => Style::default().fg(Color::Red),
    };
    TableRow::new(vec![
        r.slot.to_string(),
        r.pid.to_string(),
        r.generation.to_string(),
        r.state.to_string(),
        r.age.clone(),
        r.rps.map_or("-".into(), |x| format!("{x:.0}")),
        r.connections.to_string(),
        r.upgraded.to_string(),
        r.rss.clone(),
        r.trend.clone(),
        r.heartbeat.clone(),
        r.lag.clone(),
    ])
    .style(style)
}

/// A frame as plain text, `width` columns wide (trailing spaces cut).
pub fn text(view: &View, width: u16) -> String {
    let area = Rect::new(0, 0, width, height(view));
    let mut buf = Buffer::empty(area);
    render(area, &mut buf, view);
    let mut out = String::new();
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_as_text_has_the_header_and_a_row_per_worker() {
        let row = Row {
            slot: 3,
            pid: 4242,
            generation: 2,
            state: WorkerState::Ready,
            age: "5s".into(),
            rps: Some(1234.0),
            connections: 2,
            upgraded: 0,
            rss: "3.1M".into(),
            trend: "▁█".into(),
            heartbeat: "0.2s".into(),
            lag: "0.1ms".into(),
        };
        let view = View {
            title: "master 1  generation 2".into(),
            phase: "running".into(),
            traffic: "1234 req/s".into(),
            workers: vec![row],
            events: vec!["3s ago  reload success".into()],
            connected: true,
        };
        let t = text(&view, 120);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "master 1  generation 2");
        assert!(lines[3].starts_with("SLOT PID"), "{t}");
        assert!(lines[4].starts_with("3    4242    2   ready    5s"), "{t}");
        assert!(lines[4].contains("1234"), "{t}");
        assert!(t.contains("recent events"), "{t}");
        assert!(t.contains("reload success"), "{t}");
        // At 80 columns every column is whole: 7-digit PIDs, a memory
        // limit, a full trend.
        let mut wide = view.clone();
        wide.workers[0].pid = 4_194_303;
        wide.workers[0].rss = "123.4M/512.0M".into();
        wide.workers[0].trend = "▁▃█".into();
        wide.workers[0].lag = "12.5ms".into();
        let t80 = text(&wide, 80);
        let row = t80.lines().nth(4).unwrap();
        for cell in ["4194303", "ready", "123.4M/512.0M", "▁▃█", "0.2s", "12.5ms"] {
            assert!(row.contains(cell), "{cell} in {row:?}");
        }
        // Narrow: what fits, no panic.
        let narrow = text(&view, 20);
        assert!(narrow.lines().all(|l| l.chars().count() <= 20));
    }
}
