"""The reload-under-load plot of bench/run: requests per second (line) and
failed requests per second (red bars) for rsvisor and gunicorn, with the
HUPs marked. Plain SVG, no plotting library needed."""

PANEL_W, PANEL_H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 200, 70, 20, 30, 40


def _panel(name, data, y0, ymax):
    ok, errors, hups = data["ok"], data["errors"], data["hups"]
    n = max(len(ok), 1)
    w = PANEL_W - PAD_L - PAD_R
    h = PANEL_H - PAD_T - PAD_B
    x = lambda i: PAD_L + w * i / n  # noqa: E731
    y = lambda v: y0 + PAD_T + h - h * v / ymax  # noqa: E731
    out = [f'<text x="{PAD_L}" y="{y0 + 20}" font-size="14" font-weight="bold">{name}: '
           f'{data["total_ok"]:,} requests, {data["total_errors"]:,} failed</text>']
    # Axes and grid.
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        v = ymax * frac
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{PAD_L - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:,.0f}</text>')
    for i in range(0, n + 1, 5):
        out.append(f'<text x="{x(i):.1f}" y="{y0 + PANEL_H - PAD_B + 14}" font-size="10" text-anchor="middle">{i}s</text>')
    # HUPs.
    for t in hups:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y0 + PAD_T}" y2="{y0 + PAD_T + h}" '
                   f'stroke="#888" stroke-dasharray="4,3"/>')
        out.append(f'<text x="{x(t) + 2:.1f}" y="{y0 + PAD_T + 10}" font-size="9" fill="#666">HUP</text>')
    # Errors as bars (same scale, at least 2 px so one error shows).
    bw = w / n * 0.6
    for i, e in enumerate(errors):
        if e:
            top = min(y(e), y(0) - 2)
            out.append(f'<rect x="{x(i + 0.2):.1f}" y="{top:.1f}" width="{bw:.1f}" height="{y(0) - top:.1f}" '
                       f'fill="#d62728"><title>{e} failed</title></rect>')
    pts = " ".join(f"{x(i + 0.5):.1f},{y(v):.1f}" for i, v in enumerate(ok))
    out.append(f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    return out


def reload_svg(results, path):
    names = [n for n in ("rsvisor", "gunicorn") if n in results]
    ymax = max(max(results[n]["ok"] or [1]) for n in names) * 1.1 or 1
    height = PANEL_H * len(names) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_W}" height="{height}" '
             f'font-family="sans-serif" viewBox="0 0 {PANEL_W} {height}">',
             f'<rect width="{PANEL_W}" height="{height}" fill="white"/>']
    for i, n in enumerate(names):
        parts += _panel(n, results[n], i * PANEL_H, ymax)
    parts.append(f'<text x="{PAD_L}" y="{height - 8}" font-size="11" fill="#444">'
                 'blue: responses per second; red: failed requests per second; dashed: SIGHUP</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")
