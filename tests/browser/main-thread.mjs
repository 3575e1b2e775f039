// How long the page's main thread is busy, and with what: the Long Tasks API gives every task over
// 50 ms of wall time; a Chromium trace of the same run gives each task's thread (CPU) time too. On a
// shared 2-core machine where SwiftShader's threads run the model, the OS can hold the main thread
// off the CPU in the middle of a task that needs 2 ms: that task then reads as "long" without the
// page having done anything long. The trace tells the two apart.
import assert from 'node:assert/strict';

/** Installs, before the page's scripts run, an observer of its long tasks and a mark of when it first showed content. */
export async function observeLongTasks(page) {
    await page.addInitScript(() => {
        window.__longTasks = [];
        new PerformanceObserver((list) => {
            for (const task of list.getEntries()) window.__longTasks.push({ start: task.startTime, duration: task.duration });
        }).observe({ type: 'longtask', buffered: true });
        // Interactive: the page shows its content (the model picker, or a link's load in progress),
        // at the end of the task that starts the wasm app.
        const shown = () => {
            if (window.__interactive === undefined && document.querySelector('main > section')) {
                window.__interactive = performance.now();
            }
        };
        new MutationObserver(shown).observe(document, { subtree: true, childList: true });
    });
}

/** The page's long tasks since it became interactive, and the longest before that (the app's start). */
export async function longTasksSinceInteractive(page) {
    const { tasks, interactive } = await page.evaluate(() => ({ tasks: window.__longTasks, interactive: window.__interactive }));
    assert.ok(interactive > 0, 'the page showed its content');
    const longest = (list) => Math.max(0, ...list.map((t) => t.duration));
    return {
        interactive,
        after: tasks.filter((t) => t.start >= interactive),
        before: longest(tasks.filter((t) => t.start < interactive)),
    };
}

/**
 * Starts a trace of the browser's top-level tasks (category 'toplevel', light enough to leave on).
 * `mark(page)` puts a mark in the page's timeline and the trace, to place the page's long tasks in
 * the trace (each page has its own time origin); `stop()` ends the trace.
 */
export async function traceMainThreads(page) {
    const cdp = await page.context().newCDPSession(page);
    const events = [];
    const marks = new Map();
    cdp.on('Tracing.dataCollected', ({ value }) => {
        for (const e of value) if (e.ph === 'X' || e.name.startsWith('rg-trace-')) events.push(e);
    });
    await cdp.send('Tracing.start', { categories: 'toplevel,blink.user_timing', transferMode: 'ReportEvents' });
    return {
        /** Marks `page`'s timeline; returns the label for `cpuTimes`. */
        async mark(page) {
            const label = `rg-trace-${marks.size}`;
            marks.set(label, await page.evaluate((label) => performance.mark(label).startTime, label));
            return label;
        },
        async stop() {
            const complete = new Promise((resolve) => cdp.once('Tracing.tracingComplete', resolve));
            await cdp.send('Tracing.end');
            await complete;
            await cdp.detach();
            return { events, marks };
        },
    };
}

/** The page's main-thread events in the trace, outermost only, in the page's own timeline (ms). */
function mainThreadTasks({ events, marks }, label) {
    const mark = events.find((e) => e.name === label);
    assert.ok(mark, `the trace holds the mark ${label}`);
    const offset = mark.ts / 1000 - marks.get(label);
    const tasks = [];
    let end = -Infinity;
    for (const e of events.filter((e) => e.ph === 'X' && e.pid === mark.pid && e.tid === mark.tid).sort((a, b) => a.ts - b.ts)) {
        const start = e.ts / 1000 - offset;
        if (start < end) continue; // nested in the task before (the scheduler's task and what it runs are one)
        end = start + e.dur / 1000;
        tasks.push({ start, wall: e.dur / 1000, cpu: (e.tdur ?? e.dur) / 1000 });
    }
    return tasks;
}

/**
 * Each long task with the thread (CPU) time the trace gives the page's main thread within it; `label`
 * names the mark made on that page. Null when the trace has nothing there.
 */
export function withCpuTime(longTasks, trace, label) {
    const tasks = mainThreadTasks(trace, label);
    return longTasks.map((task) => {
        const within = tasks.filter((t) => t.start >= task.start - 1 && t.start <= task.start + task.duration + 1);
        return { ...task, cpu: within.length ? within.reduce((sum, t) => sum + t.cpu, 0) : null };
    });
}

/** The main-thread task that ran longest on the CPU since `since` (the page's timeline), on the page marked `label`. */
export function busiestSince(trace, label, since) {
    return mainThreadTasks(trace, label).filter((t) => t.start >= since).reduce((a, t) => (t.cpu > (a?.cpu ?? -1) ? t : a), null);
}
