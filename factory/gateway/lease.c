/* Sandbox lifetimes, in one place: a running sandbox ends (is killed, or
 * paused when it was created with onTimeout pause) when its lease runs
 * out; a paused one keeps no lease.  Leases are in the state file, so they
 * survive a gateway restart; a lease that ran out while the gateway was
 * down ends at its first tick.  The daemon holds each as well, a grace
 * later (get --ttl at create, resume --ttl at connect, a Lease request when
 * a timeout changes): with no gateway running, the daemon still releases
 * or suspends the VM, and a gateway started again finds its sandbox gone
 * or paused (gw_reconcile). */
#include <errno.h>
#include <stdio.h>

#include "gw.h"
#include "log.h"

unsigned
gw_lease_timeout(const struct gw *gw, int64_t asked)
{
	if (asked <= 0)
		return gw->o.default_timeout_s;
	return asked > (int64_t)gw->o.max_timeout_s ? gw->o.max_timeout_s : (unsigned)asked;
}

/* Seconds after the gateway's own expiry: its kill or pause job has long
 * started by then (the VM busy, which the daemon's expiry waits for). */
#define DAEMON_GRACE_S 30

unsigned
gw_lease_daemon_ttl(unsigned timeout_s)
{
	return timeout_s + DAEMON_GRACE_S;
}

static void
pushed(struct gw *gw, struct gw_sandbox *sb, int rc, const struct vmf_error *err, void *arg)
{
	(void)gw, (void)arg;
	/* The gateway's own lease still ends the sandbox. */
	if (rc < 0 && rc != -EALREADY)
		log_warn("sandbox %s: the daemon did not take its lease: %s", sb->id, err->msg);
}

void
gw_lease_push(struct gw *gw, struct gw_sandbox *sb)
{
	if (sb->state == GW_SB_RUNNING && gw_vm_run(gw, sb, GW_VM_LEASE, pushed, NULL) < 0)
		log_warn("sandbox %s: its lease stays the gateway's alone (too many jobs queued)", sb->id);
}

void
gw_lease_set(struct gw *gw, struct gw_sandbox *sb, unsigned timeout_s)
{
	(void)gw;
	sb->end_ms = gw_now_ms() + (int64_t)timeout_s * 1000;
	sb->expiring = false;
}

void
gw_lease_extend(struct gw *gw, struct gw_sandbox *sb, unsigned timeout_s)
{
	int64_t end = gw_now_ms() + (int64_t)timeout_s * 1000;
	if (end > sb->end_ms)
		gw_lease_set(gw, sb, timeout_s);
}

static void
expired(struct gw *gw, struct gw_sandbox *sb, int rc, const struct vmf_error *err, void *arg)
{
	(void)arg;
	if (rc < 0) {
		/* Tried again at a later tick. */
		sb->expiring = false;
		log_warn("sandbox %s: its lease ran out, but %s", sb->id, err->msg);
		return;
	}
	gw_state_save(gw, NULL, NULL);
}

void
gw_lease_tick(struct gw *gw)
{
	if (gw->stopping)
		return;
	int64_t now = gw_now_ms();
	for (struct gw_sandbox *sb = gw->sandboxes; sb; sb = sb->next) {
		if (sb->state != GW_SB_RUNNING || sb->dying || sb->expiring || sb->end_ms > now)
			continue;
		sb->expiring = true;
		log_info("sandbox %s (team %s): its lease ran out: %s", sb->id, sb->team,
			 sb->auto_pause ? "pausing it" : "killing it");
		int r = sb->auto_pause ? gw_vm_run(gw, sb, GW_VM_PAUSE, expired, NULL) : gw_vm_run(gw, sb, GW_VM_KILL, expired, NULL);
		if (r < 0)
			sb->expiring = false;
	}
}
