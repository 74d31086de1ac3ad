"""Where users' mail is kept: the mailbox interface (:mod:`.interface`), the
store ``mail_location`` opens (:mod:`.location`), and the formats behind it (:mod:`.mbox`)."""
