/* Sandbox lifetimes, in one place: a running sandbox ends (is killed, or
 * paused when it was created with onTimeout pause) when its lease runs
 * out; a paused one keeps no lease.  Leases are in the state file, so they
 * survive a gateway restart; a lease that ran out while the gateway was
 * down ends at its first tick.  The daemon does not know of them: when it
 * gains leases of its own (get --ttl), this file hands them over. */
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
