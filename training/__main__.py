from foundation.exit_codes import exit_now
from training.child import main

exit_now(main())
