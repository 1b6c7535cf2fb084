package replay

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// progress draws a one-line bar to w, at most every redraw interval, and is
// a no-op when w is nil. It is used by one goroutine.
type progress struct {
	w     io.Writer
	total int // requests stored in the window when the replay started; an upper bound
	last  time.Time
	drawn bool
	sent  int
	errs  int
}

const redraw = 100 * time.Millisecond

func newProgress(w io.Writer, total int) *progress {
	return &progress{w: w, total: total}
}

func (p *progress) update(sent, errs int) {
	if p.w == nil {
		return
	}
	p.sent, p.errs = sent, errs
	if time.Since(p.last) < redraw {
		return
	}
	p.draw()
}

func (p *progress) draw() {
	p.last = time.Now()
	p.drawn = true
	const width = 30
	fill := 0
	if p.total > 0 {
		fill = min(p.sent*width/p.total, width)
	}
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d sent, %d errors ", strings.Repeat("=", fill), strings.Repeat(" ", width-fill), p.sent, p.total, p.errs)
}

// done draws the final state and ends the line.
func (p *progress) done() {
	if p.w == nil || !p.drawn && p.sent == 0 && p.errs == 0 {
		return
	}
	p.draw()
	fmt.Fprintln(p.w)
}
