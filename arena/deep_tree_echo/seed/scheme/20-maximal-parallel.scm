;;; Every Rule That Can Fire, Fires
;; In a P system, one step is not one rule. All objects that can be
;; consumed by some rule are consumed at once, in maximally parallel
;; fashion, and the products appear only after the step ends. I read
;; rules as (left-side . right-side), both multisets as lists.

;; remove one copy of x from a bag, or #f if it is absent
(define (take x bag)
  (cond ((null? bag) #f)
        ((equal? x (car bag)) (cdr bag))
        (else (let ((rest (take x (cdr bag))))
                (and rest (cons (car bag) rest))))))

;; take a whole multiset out of a bag, or #f if it does not fit
(define (take-all xs bag)
  (cond ((null? xs) bag)
        ((take (car xs) bag) => (lambda (b) (take-all (cdr xs) b)))
        (else #f)))

;; fire one rule as often as the bag allows; return (bag . products)
(define (fire rule bag products)
  (let ((rest (take-all (car rule) bag)))
    (if rest
        (fire rule rest (append (cdr rule) products))
        (cons bag products))))

;; step: give each rule its turn, then release all products together
(define (step rules bag)
  (let loop ((rs rules) (bag bag) (made '()))
    (if (null? rs)
        (append bag made)
        (let ((r (fire (car rs) bag made)))
          (loop (cdr rs) (car r) (cdr r))))))

(define rules '(((a a) . (b)) ((b) . (c c))))

;; Real P systems choose nondeterministically among
;; all maximal ways to assign objects to rules. I take the rules in
;; order, which yields one valid maximal choice, not every one. Note
;; the new b objects wait for the next step before they can react.
;;
;; Example usage:
;; (step rules '(a a a a a b)) => (a c c b b)
;; (step rules (step rules '(a a a a a b))) => (a c c c c c c)
;; (step rules '(a)) => (a)
